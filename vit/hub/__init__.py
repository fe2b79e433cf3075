"""Share a run: a model card, a push to the Hugging Face Hub, and an ONNX export.

    url = push_run("checkpoints/<run-id>", "alice/pets-vit", token=token)
    path, max_diff = export_onnx("checkpoints/<run-id>")

A pushed repo is a plain timm model (config.json with label_names and the data
config, model.safetensors), so `timm.create_model("hf-hub:alice/pets-vit",
pretrained=True)` loads it with no code of ours. The README is a model card
made with huggingface_hub's ModelCard: metadata, results per class, the
confusion matrix and learning curves (PNG files pushed with it), the training
settings, usage, and the limits of a model trained on little data.

The token is used for the one call it is given to. It is never stored, logged
or put in a message: every error is rewritten without it.
"""
from vit.hub.card import CARD, CONFUSION_PNG, CURVES_PNG, card_preview, model_card, write_card
from vit.hub.onnx import compare, export_onnx, onnx_metadata, quantize_onnx, validation_images
from vit.hub.plots import confusion_image, curves_image, reliability_image
from vit.hub.push import TOKENS_URL, HubError, check_token, push_run

__all__ = ["CARD", "CONFUSION_PNG", "CURVES_PNG", "HubError", "TOKENS_URL", "card_preview", "check_token", "compare",
           "confusion_image", "curves_image", "export_onnx", "model_card", "onnx_metadata", "push_run", "quantize_onnx",
           "reliability_image", "validation_images", "write_card"]
