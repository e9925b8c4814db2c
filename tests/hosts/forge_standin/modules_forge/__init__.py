# Stand-in for lllyasviel/stable-diffusion-webui-forge modules_forge/__init__.py at dfdcbab685e57677014f05a3309b48cc87383167: only its
# presence matters (asag.hosts.detect probes it). Test-only: see tests/hosts/forge_env.py.
