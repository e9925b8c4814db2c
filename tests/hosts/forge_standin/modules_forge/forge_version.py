# Stand-in for lllyasviel/stable-diffusion-webui-forge modules_forge/forge_version.py at
# dfdcbab685e57677014f05a3309b48cc87383167: a version number, not a line name.
version = '2.0.1v1.10.1'
