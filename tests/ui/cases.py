"""What the browser tests type and paste, shared by the harness (gradio venvs) and the tests."""

# A layer list that is not among the control's suggestions.
TYPED_LAYERS = "d1.0,u0-2"

# Every parameter away from its default, as a pasted infotext carries it.
PASTED_FIELDS = dict(enabled=True, scale=2.5, iterations=4, strength=0.5, layers="d1.0,u0-2", start=0.1, end=0.9,
                     progress_by="sigma", schedule="cosine", rescale=0.3, hires="override", hires_scale=1.0,
                     hires_iterations=3, full_batch=True)

# The Settings tab of the test page (tests/ui/harness.py). One of the host's own options,
# registered before the extensions' (A1111 modules/shared_options.py "Clip skip"): the refresh on
# page load updates it in the same event as the ASAG options.
HOST_SETTING = ("CLIP_stop_at_last_layers", 1, "Clip skip", ("sd", "Stable Diffusion"))
# The option "Quicksettings list": the ASAG layer default at the top of the page, as a user may put it.
QUICKSETTINGS = ["asag_default_layers"]
# Changed after the page was built (by the API, or on another page): the refresh on load shows them.
REFRESHED_VALUES = {"asag_default_scale": 4.5, "asag_default_layers": "u1, m0", "CLIP_stop_at_last_layers": 3}
# Typed into the quicksetting (not among the suggestions), then applied in the Settings tab.
QUICKSETTING_VALUE = "d1.0,u0-2"
APPLIED_VALUES = {"asag_default_scale": 2.75, "asag_reuse_blocks": False, "asag_attention_budget_mib": 512,
                  "asag_diagnostics": True, "CLIP_stop_at_last_layers": 2}


# Forge Neo's page (tests/ui/harness.py, page "neo"): its checkpoints, as file name -> (the UI
# preset they go with, their tensor names; None: a GGUF file, whose tensors are not read). The
# harness writes each as a real safetensors file (one float per tensor); the loaded model is a
# pruned Chroma from a pickle file, whose header cannot be read.
def _numbered(prefix, count, suffix):
    return [f"{prefix}.{i}.{suffix}" for i in range(count)]


DIFFUSION = "model.diffusion_model."
NEO_CHECKPOINTS = {
    "sdxl_base.safetensors": ("xl", [DIFFUSION + "input_blocks.0.0.weight", DIFFUSION + "middle_block.1.proj_in.weight",
                                     "conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
                                     "first_stage_model.decoder.conv_in.weight"]),
    "flux2_klein_4b.safetensors": ("klein", ["img_in.weight", "double_stream_modulation_img.lin.weight",
                                             *_numbered("double_blocks", 5, "img_attn.norm.key_norm.scale"),
                                             *_numbered("single_blocks", 20, "linear1.weight")]),
    "z_image_turbo.safetensors": ("zit", [DIFFUSION + k for k in ["cap_embedder.1.weight",
                                                                   *_numbered("context_refiner", 2, "attention.qkv.weight"),
                                                                   *_numbered("noise_refiner", 2, "attention.k_norm.weight"),
                                                                   *_numbered("layers", 30, "attention.qkv.weight")]]),
    "qwen_image_Q4_K_M.gguf": ("qwen", None),
    "wan2.2_t2v_low_noise.safetensors": ("wan", ["patch_embedding.weight", "head.modulation", *_numbered("blocks", 4, "ffn.0.weight")]),
    "chroma_pruned.ckpt": ("flux", None),
}
LOADED_CHECKPOINT = "chroma_pruned.ckpt"
LOADED_BLOCKS = {"double_blocks": 19, "single_blocks": 30}  # what the loaded model has
NEO_START = ("xl", "sdxl_base.safetensors")  # the preset and checkpoint Neo has when the page is built
TYPED_DIT_LAYERS = "single 3-5"  # typed into the transformer control


def safetensors_bytes(names) -> bytes:
    """A safetensors file holding one float32 zero per tensor name."""
    import json

    header = json.dumps({name: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
                         for i, name in enumerate(names)}).encode("utf-8")
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + bytes(4 * len(names))
