"""Entry point: build the UI and serve it (locally at http://127.0.0.1:7860, or as a Space)."""
from vit.ui import CSS, THEME, build_app

if __name__ == "__main__":
    build_app().launch(theme=THEME, css=CSS)
