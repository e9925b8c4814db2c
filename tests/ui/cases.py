"""What the browser tests type and paste, shared by the harness (gradio venvs) and the tests."""

# A layer list that is not among the control's suggestions.
TYPED_LAYERS = "d1.0,u0-2"

# Every parameter away from its default, as a pasted infotext carries it.
PASTED_FIELDS = dict(enabled=True, scale=2.5, iterations=4, strength=0.5, layers="d1.0,u0-2", start=0.1, end=0.9,
                     progress_by="sigma", schedule="cosine", rescale=0.3, hires="override", hires_scale=1.0,
                     hires_iterations=3, full_batch=True)
