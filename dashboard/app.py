"""cxr-studio dashboard: `streamlit run dashboard/app.py` (or `make run`)."""
from __future__ import annotations

import logging
import sys
import threading

import streamlit as st

from core.config.backend import use_backend

use_backend("tensorflow")  # the dashboard's backend whatever $KERAS_BACKEND says: Grad-CAM and export need it
from dashboard import state  # noqa: E402  (after the backend: it may import Keras)

st.set_page_config(page_title="cxr-studio", page_icon=":material/pulmonology:", layout="wide")


@st.cache_resource(show_spinner=False)
def _warm_up_tensorflow() -> threading.Thread:
    """Import TensorFlow in the background once per server, so model pages open quickly later."""

    def work():
        try:
            import core.model.classifier  # noqa: F401  (imports keras / TensorFlow)
        except Exception:  # noqa: BLE001 - the page that needs it will report the error itself
            pass

    thread = threading.Thread(target=work, name="tf-warm-up", daemon=True)
    thread.start()
    return thread


@st.cache_resource(show_spinner=False)
def _keep_the_keras_session() -> bool:
    """Stop Streamlit from calling ``keras.backend.clear_session()`` after every script and fragment run.

    Streamlit does it (``script_runner._clean_problem_modules``) whenever Keras is imported. Our models
    live in ``st.cache_resource`` across reruns, so clearing only throws away TensorFlow's kernel cache
    and runs a full ``gc.collect()``. With five tabs on a live run, py-spy put that (with Streamlit's own
    post-run ``gc.collect``, off in ``.streamlit/config.toml``) at three quarters of the server's CPU
    (``benchmarks/dashboard.py``). Matplotlib's cleanup is kept.
    """
    try:
        from streamlit.runtime.scriptrunner import script_runner
    except ImportError:
        return False
    if getattr(script_runner._clean_problem_modules, "keeps_keras", False):
        return True

    def clean_without_keras() -> None:
        """The original's other duty, kept: close matplotlib figures left open by a script."""
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is not None:
            try:
                plt.close("all")
            except Exception:  # noqa: BLE001 - as the original: a cleanup never breaks the app
                pass

    clean_without_keras.keeps_keras = True  # type: ignore[attr-defined]
    script_runner._clean_problem_modules = clean_without_keras
    return True


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
if not _keep_the_keras_session():
    logging.getLogger(__name__).warning("Streamlit's per-rerun Keras cleanup could not be turned off")
try:
    page.run()
finally:  # after the page has drawn (also when it stops early): the import would slow its first drawing down
    _warm_up_tensorflow()
