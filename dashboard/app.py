"""cxr-studio dashboard: `streamlit run dashboard/app.py` (or `make run`)."""
from __future__ import annotations

import threading

import streamlit as st

from dashboard import state

st.set_page_config(page_title="cxr-studio", page_icon=":material/pulmonology:", layout="wide")


@st.cache_resource(show_spinner=False)
def _warm_up_tensorflow() -> threading.Thread:
    """Import TensorFlow in the background once per server, so model pages open quickly later."""

    def work():
        try:
            import core.model  # noqa: F401  (imports keras / TensorFlow)
        except Exception:  # noqa: BLE001 - the page that needs it will report the error itself
            pass

    thread = threading.Thread(target=work, name="tf-warm-up", daemon=True)
    thread.start()
    return thread


# Less empty space above the page title than Streamlit's default.
st.html("<style>[data-testid='stMainBlockContainer']{padding-top:2.5rem}</style>")
state.init_settings()
page = st.navigation(
    [
        st.Page(state.PAGES["data"], title="Data", icon=":material/dataset:", default=True),
        st.Page(state.PAGES["train"], title="Train", icon=":material/model_training:"),
        st.Page(state.PAGES["sweep"], title="Sweep", icon=":material/grid_view:"),
        st.Page(state.PAGES["runs"], title="Runs", icon=":material/table_rows:"),
        st.Page(state.PAGES["evaluate"], title="Evaluate", icon=":material/monitoring:"),
        st.Page(state.PAGES["explain"], title="Explain", icon=":material/search_insights:"),
        st.Page(state.PAGES["demo"], title="Demo", icon=":material/stethoscope:"),
    ],
    position="sidebar",
)
with st.sidebar:
    st.markdown("### :material/pulmonology: cxr-studio")
    st.caption("Chest X-ray pneumonia classification by transfer learning")
state.sidebar_notice()
_warm_up_tensorflow()
page.run()
