# Stand-in package of Comfy-Org/ComfyUI comfy/ldm/ at a125cd84b054a57729b5eecab930ca9408719832.
