"""Stand-in of the AUTOMATIC1111 WebUI modules that sd-webui-asag imports, and of the parts of
processing and sampling that decide what those modules see.

Mirrors stable-diffusion-webui v1.10.1 (commit 82a973c04367123ae98bd9abdf80d9eda9b910e2); each file
names the host file it stands for. Written for these tests, not copied: only the behaviour the
extension depends on is kept (batch layout, callback order and arguments, what is read back,
exceptions swallowed by callback and hook wrappers). The models and samplers are real: ldm's
LatentDiffusion and k-diffusion.
"""
