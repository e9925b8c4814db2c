// Hover hints for the ASAG controls, added to the WebUI's `titles` (javascript/hints.js).
// GENERATED from asag/params.py by `python -m asag.hosts.hints`: do not edit by hand.
(function() {
    if (typeof titles !== "object" || titles === null) {
        return; // a host without the WebUI's hints.js: nothing to add to
    }
    var asagTitles = {
        "ASAG": "Turn Adversarial Sinkhorn Attention Guidance on for this generation.",
        "ASAG scale": "Guidance strength w: the result moves by w * (cond - perturbed). 0 turns the extra pass off. 1 to 3 with CFG; 3 to 5 without CFG.",
        "Sinkhorn iterations": "Sinkhorn balancing steps for the adversarial plan. 0 is plain (negated) softmax; 2-3 are nearly balanced; more costs a little time and changes little.",
        "Adversarial strength": "lambda: how hard the plan pushes queries away from similar keys. 0 gives uniform attention; negative values give ordinary balanced attention (an ablation).",
        "ASAG layers": "Self-attention layers to perturb: auto (the default, middle), all, input, middle, output, or blocks such as m0, d1, d1.0, u0-2 (d = input, m = middle, u = output; numbered among the blocks that have attention; .N picks a transformer block), comma separated.",
        "Active from": "Start of the active window, as a fraction of sampling progress (0 = first step).",
        "Active until": "End of the active window, as a fraction of sampling progress (1 = last step).",
        "Progress measured by": "steps: the window counts sampler steps. sigma: the window follows the noise level (log-sigma between the model's largest and smallest), the same for every sampler and denoise strength.",
        "Scale schedule": "How the scale changes over the active window: constant, or a linear or cosine decay from the full scale at its start to 0 at its end (strong on layout, light on detail).",
        "ASAG rescale": "Blend towards the guided prediction rescaled to the conditional prediction's standard deviation (as CFG rescale). Tames over-saturation at high scales. 0 = off.",
        "Hires. fix pass": "What ASAG does in the hires. fix second pass: same settings, override (the two values below), off, or only (skip the first pass).",
        "Hires. fix scale": "ASAG scale in the hires. fix pass when the hires mode is override.",
        "Hires. fix iterations": "Sinkhorn iterations in the hires. fix pass when the hires mode is override.",
        "Full-batch compatibility": "Run the extra pass on the whole cond + uncond batch instead of the cond rows only. Slower; chosen automatically when a ControlNet unit needs it (IP-Adapter, reference, inpaint_only, ...). A1111 only: Forge batches the extra pass itself.",
        "Transformer-model blocks": "Blocks to perturb on the transformer models of Forge Neo, where 'ASAG layers' does not apply: auto (the model's default: double 7-9, single 7-9 on Flux and Chroma; layers 7-9 on Lumina 2 and Z-Image; blocks 7-9 on Anima and Qwen-Image; on a model with fewer blocks, such as Flux.2 Klein, the same relative depth; the infotext's ASAG auto blocks names them), all, a kind (double, single; refiner, layers; blocks), or ranges such as double 7-9, single 20 (the model's own block numbers), comma separated."
    };
    for (var label in asagTitles) {
        titles[label] = asagTitles[label];
    }
})();
