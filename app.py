"""The few-shot learning lab: build a task, watch MAML adapt, look at the features."""

import streamlit as st


def main() -> None:
    # The pages' heavy libraries (pandas, plotly, torch, metacore) are imported here, once, before any page: sessions
    # whose first pages imported pandas at the same moment met a half-imported module (see lab/__init__.py).
    import lab.sidebar  # noqa: F401

    st.set_page_config(page_title="Few-shot lab", page_icon="🧪", layout="wide")
    pages = [
        st.Page("pages/home.py", title="Home", icon="🏠", default=True),
        st.Page("pages/build.py", title="Build a task", icon="🧩"),
        st.Page("pages/adapt.py", title="Adapt step by step", icon="📉"),
        st.Page("pages/features.py", title="Features", icon="🗺️"),
        st.Page("pages/classify.py", title="Classify", icon="🔎"),
        st.Page("pages/check.py", title="Check a model", icon="🩺"),
        st.Page("pages/metatrain.py", title="Meta-train", icon="🏋️"),
        st.Page("pages/learn.py", title="Learn", icon="📚"),
    ]
    st.navigation(pages).run()


# Streamlit runs this file as __main__. The worker processes that draw maps (metacore.isolation, started by spawn)
# import it as __mp_main__: there it must not draw the app (it logged Streamlit's "missing ScriptRunContext"
# warnings and imported every page's libraries before each worker's first map).
if __name__ == "__main__":
    main()
