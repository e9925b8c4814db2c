# Stand-in for Comfy-Org/ComfyUI comfy/ (a125cd84b054a57729b5eecab930ca9408719832): the package.
