"""Model-card templates (Jinja, rendered by `huggingface_hub.ModelCard.from_template`)."""
