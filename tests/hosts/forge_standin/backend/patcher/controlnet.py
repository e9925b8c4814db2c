# Stand-in for lllyasviel/stable-diffusion-webui-forge backend/patcher/controlnet.py at
# dfdcbab685e57677014f05a3309b48cc87383167: the ControlNet and T2I-Adapter objects of the
# controlnet_linked_list. Kept faithful: get_control(x_noisy, t, cond, batched_number) runs on every
# UNet call, recursing into previous_controlnet, and control_merge's layout: "input" entries
# inserted in front (apply_control pops them from the back, so the first input block takes the
# first one), "output" appended per encoder level and "middle" last, scaled by strength, a previous
# unit's control added. Simplified: no advanced weighting, timestep range, hint resizing or
# broadcast_image_to (one hint image).
import torch


class ControlBase:
    def __init__(self, network, hint, strength=1.0):
        self.network, self.cond_hint, self.strength = network, hint, strength
        self.previous_controlnet = None
        self.transformer_options = None

    def set_previous_controlnet(self, controlnet):
        self.previous_controlnet = controlnet
        return self

    def control_merge(self, control_input, control_output, control_prev, output_dtype):
        out = {"input": [], "middle": [], "output": []}
        for x in control_input or []:
            out["input"].insert(0, None if x is None else (x * self.strength).to(output_dtype))
        for i, x in enumerate(control_output or []):
            key = "middle" if i == len(control_output) - 1 else "output"
            out[key].append(None if x is None else (x * self.strength).to(output_dtype))
        if control_prev is not None:
            for key in ("input", "middle", "output"):
                mine = out[key]
                for i, previous in enumerate(control_prev[key]):
                    if i >= len(mine):
                        mine.append(previous)
                    elif previous is not None:
                        mine[i] = previous if mine[i] is None else mine[i] + previous
        return out

    def previous_control(self, x_noisy, t, cond, batched_number):
        if self.previous_controlnet is None:
            return None
        return self.previous_controlnet.get_control(x_noisy, t, cond, batched_number)


class ControlNet(ControlBase):
    """A ControlNet: residuals for the skip connections and the middle block, from x and the hint."""

    def get_control(self, x_noisy, t, cond, batched_number):
        control_prev = self.previous_control(x_noisy, t, cond, batched_number)
        outputs = self.network(x_noisy, self.cond_hint, t, cond["c_crossattn"])
        return self.control_merge(None, outputs, control_prev, x_noisy.dtype)


class T2IAdapter(ControlBase):
    """A T2I-Adapter: features added to the outputs of some input blocks, from the hint alone."""

    def __init__(self, network, hint, blocks, strength=1.0):
        super().__init__(network, hint, strength)
        self.blocks = blocks  # which input blocks get a feature

    def get_control(self, x_noisy, t, cond, batched_number):
        control_prev = self.previous_control(x_noisy, t, cond, batched_number)
        hint_batch = self.cond_hint.expand(x_noisy.shape[0], -1, -1, -1)
        features = self.network(hint_batch, self.cond_hint, torch.zeros_like(t), torch.zeros_like(cond["c_crossattn"]))
        control_input = [features[i] if i in self.blocks else None for i in range(len(features) - 1)]
        return self.control_merge(control_input, None, control_prev, x_noisy.dtype)
