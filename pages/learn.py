import streamlit as st

import lab

lab.sidebar()
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
    "curve of support and query loss you see there. The head starts at zero (or at the class prototypes), "
    "so the same model serves any number of classes."
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
    "the inner loop, θ'ᵢ = θ − α∇L, on one fixed held-out task, taken from θ as it was after 0, 10, 50, 100 … "
    "outer steps: the same few inner steps, useless from the first θ, decisive from the later ones."
)
st.subheader("First- vs second-order")
st.latex(
    r"\nabla_\theta \mathcal{L}(\theta'_i) \;=\; \big(I - \alpha \nabla^2_\theta "
    r"\mathcal{L}^{\text{support}}(\theta)\big)\, \nabla_{\theta'} \mathcal{L}^{\text{query}}(\theta'_i)"
)
st.markdown(
    "The exact meta-gradient contains a Hessian term: it differentiates *through* the inner step. "
    "**First-order MAML** drops it (treats the bracket as *I*), which is cheaper; **Reptile** moves θ toward "
    "the adapted weights; **ANIL** adapts only the head; **Meta-SGD** also learns α per weight; **ProtoNet** "
    "skips gradient steps and classifies by distance to class means. `metacore` computes the exact term "
    "(checked against finite differences in its tests)."
)
st.subheader("The photo model: meta-learning on top of a pretrained network")
st.markdown(
    "Pick **Photos** in the sidebar. A network pretrained on ImageNet (EfficientNet-Lite2) is kept *frozen*: "
    "each photo passes through it once and becomes 1280 numbers. What was meta-learned is a small adapter on "
    "those numbers and a head that starts at the class prototypes (ANIL + ProtoMAML); only the head moves in "
    "the inner loop, so a step takes milliseconds. With such strong features the prototype head is already "
    "close to the best linear head for a few shots, so the steps change little: on photos, most of the work is "
    "done by what the body learned from millions of images, and meta-learning mostly adjusts the feature space. "
    "It helps where the body is weakest (tiny CIFAR-10 images: 81.5% instead of 71.3% with plain prototypes, "
    "5-way 5-shot) and costs a little where the body is already strong (ImageNet classes, 1-shot: 87.8% "
    "instead of 91.7%): meta-learning fits the feature space to the tasks it was trained on."
)
st.subheader("Where to see it")
st.markdown(
    "- *Meta-train*: the outer loop, live: θ learning to learn, and the inner loop from each θ on the way.\n"
    "- *Adapt*: each **Step** is one inner update; the layer-distance chart shows which layers the steps move.\n"
    "- *Features*: before vs after adaptation in t-SNE — meta-learned features already separate new classes.\n"
    "- *Classify*: the adapted model on images it has never seen."
)
