# Stand-in for lllyasviel/stable-diffusion-webui-forge backend/patcher/__init__.py at dfdcbab685e57677014f05a3309b48cc87383167 (a package marker
# there too). Test-only: see tests/hosts/forge_env.py.
