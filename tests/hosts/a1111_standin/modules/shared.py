"""Stands for modules/shared.py (+ modules/shared_options.py defaults) of v1.10.1."""
from types import SimpleNamespace

opts = SimpleNamespace(
    batch_cond_uncond=True,
    pad_cond_uncond=False,
    pad_cond_uncond_v0=False,
    skip_early_cond=0.0,
    s_min_uncond_all=False,
    live_preview_content="Prompt",
)

cmd_opts = SimpleNamespace(lowvram=False, medvram=False)  # modules/shared_cmd_options.py: the launch flags


class State:
    interrupted = False
    skipped = False
    sampling_step = 0
    sampling_steps = 0

    def interrupt(self):
        self.interrupted = True


state = State()
sd_model = None  # set by the test harness to a real ldm LatentDiffusion
