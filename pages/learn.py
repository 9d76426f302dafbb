import streamlit as st

from lab.sidebar import sidebar

sidebar()
st.title("📚 How MAML learns to learn")

st.markdown(
    "**Few-shot learning**: classify among *N* new classes from *K* examples each (an *N-way K-shot task*). "
    "**Meta-learning** trains on many such tasks so that learning the next one is fast. MAML (Finn et al. 2017) "
    "does it by learning an *initialisation* θ from which a few gradient steps fit any task."
)
st.subheader("The inner loop: adapting to one task")
st.latex(r"\theta'_i \;=\; \theta - \alpha \,\nabla_\theta \mathcal{L}^{\text{support}}_{\mathcal{T}_i}(\theta)")
st.markdown(
    "This is what **Step** on the *Adapt* page does, with α the *inner learning rate*. Repeating it gives the "
    "curve of support and query loss you see there."
)
st.markdown(
    "**The head starts at zero.** Every class then gets the same score for every image: step 0 is exactly "
    "chance (support loss ln N), for any number of classes N. The body gets no gradient yet (the zero head passes "
    "none back); the head's does: for class k's row it is (1/N)(c̄ − cₖ), where cₖ is the mean feature of class "
    "k's support images and c̄ the mean over all of them. So **one step writes each class's mean feature into "
    "the head**: a prototype classifier, learned in one step rather than given. The later steps sharpen it and "
    "move the body too. (The character model centres and normalises its features, so the first step gives a "
    "cosine-prototype classifier.)"
)
st.latex(r"W^{(1)}_k \;=\; \tfrac{\alpha}{N}\,\big(c_k - \bar c\big), \qquad b^{(1)}_k = 0")
st.markdown(
    "The alternative, a **prototype head** (ProtoMAML), starts at the answer: Wₖ = 2cₖ, bₖ = −‖cₖ‖², so that the "
    "logits are −‖f − cₖ‖² plus a constant, ProtoNet's rule. Strong, but it leaves the inner loop little to do: "
    "the character model shipped before this one started there and scored the same at every step."
)
st.subheader("The outer loop: learning the initialisation")
st.latex(
    r"\min_\theta \; \sum_{\mathcal{T}_i \sim p(\mathcal{T})} \mathcal{L}^{\text{query}}_{\mathcal{T}_i}"
    r"\big(\theta - \alpha \nabla_\theta \mathcal{L}^{\text{support}}_{\mathcal{T}_i}(\theta)\big)"
)
st.latex(
    r"\theta \;\leftarrow\; \theta - \beta \,\nabla_\theta \sum_i \mathcal{L}^{\text{query}}_{\mathcal{T}_i}(\theta'_i)"
)
st.markdown(
    "The shipped models ran this outer loop once, offline (`python -m metacore train`). It judges θ by how well "
    "the *adapted* weights do on held-out query images, which is why a few steps from θ work so well."
)
st.markdown(
    "**Watch both levels on the *Meta-train* page.** Its *Each outer step* chart is the outer objective: the "
    "query loss after adaptation, averaged over the tasks of one outer step, falling as θ improves; its "
    "*Validation* chart is the same objective's accuracy on classes the outer loop never sees. Its first chart is "
    "the inner loop, θ'ᵢ = θ − α∇L, averaged over 20 fixed held-out tasks, taken from θ as it was after 0, 10, 50, "
    "100 … outer steps: the same few inner steps, useless from the first θ, decisive from the later ones."
)
st.subheader("First- vs second-order")
st.latex(
    r"\nabla_\theta \mathcal{L}(\theta'_i) \;=\; \big(I - \alpha \nabla^2_\theta "
    r"\mathcal{L}^{\text{support}}(\theta)\big)\, \nabla_{\theta'} \mathcal{L}^{\text{query}}(\theta'_i)"
)
st.markdown(
    "With K inner steps θ₀ = θ, θⱼ₊₁ = θⱼ − α∇L^support(θⱼ), the chain rule goes back through every one of them:"
)
st.latex(
    r"\nabla_\theta \mathcal{L}^{\text{query}}(\theta_K) \;=\; \prod_{j=K-1}^{0} \big(I - \alpha \nabla^2 "
    r"\mathcal{L}^{\text{support}}(\theta_j)\big)\; \nabla_{\theta_K} \mathcal{L}^{\text{query}}(\theta_K)"
)
st.markdown(
    "The exact meta-gradient contains Hessian terms: it differentiates *through* the inner steps. "
    "**First-order MAML** drops it (treats the bracket as *I*), which is cheaper; **Reptile** moves θ toward "
    "the adapted weights; **ANIL** adapts only the head; **Meta-SGD** also learns α per weight; **ProtoNet** "
    "skips gradient steps and classifies by distance to class means. `metacore` computes the exact term "
    "(checked against finite differences in its tests)."
)
st.subheader("Learning how to step: the LSTM meta-learner")
st.markdown(
    "MAML learns *where to start* and then takes plain gradient steps; Meta-SGD learns one fixed α per weight. The "
    "**LSTM meta-learner** (Ravi & Larochelle 2017) learns *the update itself*. Write an LSTM's cell update next to "
    "a gradient step:"
)
st.latex(r"c_t = f_t \odot c_{t-1} + i_t \odot \tilde c_t \qquad\qquad \theta_t = \theta_{t-1} - \alpha\, \nabla_t")
st.markdown(
    "With the cell state as the weights (c = θ), the candidate as the negative gradient (c̃ₜ = −∇ₜ), the forget "
    "gate at 1 and the input gate at α, the two are the same line. Let the gates be computed instead, and the step "
    "is learned: the input gate iₜ is a **learning rate for each weight at each step**, the forget gate fₜ how much "
    "of the weight to keep (below 1: a learned weight decay, a way out of a bad start):"
)
st.latex(
    r"i_t = \sigma\big(W_I\,[h_t,\ \theta_{t-1},\ i_{t-1}] + b_I\big) \qquad "
    r"f_t = \sigma\big(W_F\,[h_t,\ \theta_{t-1},\ f_{t-1}] + b_F\big)"
)
st.markdown(
    "hₜ is the state of a small LSTM (20 numbers per weight) that reads the step's gradient and loss, each as its "
    "log-magnitude and sign (Andrychowicz et al. 2016), so that one rule serves gradients of any scale. All weights "
    "share the rule's 2,046 meta-parameters, whatever the network's size. It starts as plain gradient "
    "descent (b_I = logit α, b_F = 5: f = 0.993), and the outer loop, as MAML's, learns both the initial cell state "
    "θ₀ and the gates' weights, through every unrolled step (the paper drops the gradient through ∇ₜ and Lₜ, "
    "`--first-order`). The lab's model, started from the MAML model, learned a warm-up: steps that grow from "
    "about 1.2x to 4-6x MAML's rate over its 5 steps, and a forget gate near 0.99; it reaches MAML's accuracy "
    "(98.5% against 98.6% at 5-way 1-shot) with a support loss five times lower. Pick **Characters, learned "
    "optimiser** in the sidebar: the *Adapt* page then draws the gates it sets, layer by layer, step by step, "
    "beside MAML's one fixed rate."
)
st.subheader("The photo model, and why meta-learning needs many classes")
st.markdown(
    "Pick **Photos** in the sidebar. A network pretrained on ImageNet (EfficientNet-Lite2) is kept *frozen*: each "
    "photo passes through it once and becomes 1280 numbers, normalised so that comparing two photos is a cosine. "
    "Each task starts from a zero head and only the head moves in the inner loop, so a step takes milliseconds: the "
    "first step gives the class means (cosine prototypes), the next ones sharpen them. **Nothing in it is "
    "meta-trained**: its few-shot skill comes from ImageNet pre-training on a million photos of 1000 classes."
)
st.markdown(
    "Not for want of trying. Meta-learning learns *what is common to the tasks it trains on*; with few classes, what "
    "is common is those classes. The lab has 28 photo classes (10 CIFAR-10, 18 ImageNet). In 6 folds, each "
    "meta-training on 17 of them and testing on the 11 it never saw, every meta-learned addition on top of the "
    "frozen features scored at best the same as the features alone, and the more weights it had, the worse "
    "(ImageNet photos of unseen classes, 5-way 1-shot: features alone 78.2%; a learned temperature 78.3%; a learned "
    "per-channel scale and shift 76.9%; a small adapter of 166,000 weights 68.0%, 67.9% with heavy augmentation). "
    "Omniglot has 964 training classes, so the character model *can* learn how to learn: that is where to watch "
    "meta-learning (and on the Meta-train page). Details: `docs/photo_folds.md`."
)
st.subheader("Where to see it")
st.markdown(
    "- *Meta-train*: the outer loop, live: θ learning to learn, and the inner loop from each θ on the way.\n"
    "- *Adapt*: each **Step** is one inner update; the layer-distance chart shows which layers the steps move.\n"
    "- *Features*: before vs after adaptation in t-SNE — meta-learned features already separate new classes.\n"
    "- *Classify*: the adapted model on images it has never seen."
)
