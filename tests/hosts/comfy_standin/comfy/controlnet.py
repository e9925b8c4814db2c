# Stand-in for Comfy-Org/ComfyUI comfy/controlnet.py at a125cd84b054a57729b5eecab930ca9408719832.
# Kept faithful: ControlNet.get_control(x_noisy, t, cond, batched_number, transformer_options),
# called by calc_cond_batch on every model call that carries the cond: the previous unit first,
# nothing outside the unit's timestep range (set by pre_run from percent_to_sigma), the hint
# broadcast to the batch (broadcast_image_to), the network run on the model's scaled input and
# timestep with the cond's c_crossattn, and control_merge (strength applied, a previous unit's
# control added). Simplified: the hint is given at latent size (no resizing or VAE), the network
# is tests/hosts/control_network.py's (a flat list: one residual per input block, the middle last).
import torch


def broadcast_image_to(tensor, target_batch_size, batched_number):
    current_batch_size = tensor.shape[0]
    if current_batch_size == 1:
        return tensor
    per_batch = target_batch_size // batched_number
    tensor = tensor[:per_batch]
    if per_batch > tensor.shape[0]:
        tensor = torch.cat([tensor] * (per_batch // tensor.shape[0]) + [tensor[:(per_batch % tensor.shape[0])]], dim=0)
    if tensor.shape[0] == target_batch_size:
        return tensor
    return torch.cat([tensor] * batched_number, dim=0)


class ControlNet:
    def __init__(self, control_model):
        self.control_model = control_model
        self.cond_hint_original = None
        self.strength = 1.0
        self.timestep_percent_range = (0.0, 1.0)
        self.timestep_range = None
        self.previous_controlnet = None
        self.model_sampling_current = None

    def set_cond_hint(self, cond_hint, strength=1.0, timestep_percent_range=(0.0, 1.0)):
        self.cond_hint_original, self.strength, self.timestep_percent_range = cond_hint, strength, timestep_percent_range
        return self

    def set_previous_controlnet(self, controlnet):
        self.previous_controlnet = controlnet
        return self

    def pre_run(self, model, percent_to_timestep_function):
        self.timestep_range = (percent_to_timestep_function(self.timestep_percent_range[0]),
                               percent_to_timestep_function(self.timestep_percent_range[1]))
        if self.previous_controlnet is not None:
            self.previous_controlnet.pre_run(model, percent_to_timestep_function)
        self.model_sampling_current = model.model_sampling

    def control_merge(self, control, control_prev, output_dtype):
        out = {"input": [], "middle": [], "output": []}
        for key in control:
            for x in control[key]:
                if x is not None:
                    x = x * self.strength
                out[key].append(x)
        if control_prev is not None:
            for key in ("input", "middle", "output"):
                o = out[key]
                for i, prev_val in enumerate(control_prev[key]):
                    if i >= len(o):
                        o.append(prev_val)
                    elif prev_val is not None:
                        o[i] = prev_val if o[i] is None else prev_val + o[i]
        return out

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
        control_prev = None
        if self.previous_controlnet is not None:
            control_prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)
        if self.timestep_range is not None:
            if t[0] > self.timestep_range[0] or t[0] < self.timestep_range[1]:
                return control_prev
        hint = self.cond_hint_original
        if x_noisy.shape[0] != hint.shape[0]:
            hint = broadcast_image_to(hint, x_noisy.shape[0], batched_number)
        timestep = self.model_sampling_current.timestep(t)
        x_noisy = self.model_sampling_current.calculate_input(t, x_noisy)
        outputs = self.control_model(x_noisy, hint, timestep.float(), cond["c_crossattn"])
        return self.control_merge({"output": outputs[:-1], "middle": outputs[-1:]}, control_prev, output_dtype=None)
