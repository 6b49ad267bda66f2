"""The Gradio web app: `python -m apps.gradio_app`."""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before any module here imports gradio
