"""The Streamlit app's own code (UI only): widgets, presentation, the checkpoint catalog and the job manager.

The pages (`Home.py`, `pages/`) import it; the `captioning` package never does.
"""
