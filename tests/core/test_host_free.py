"""The core imports nothing of any host (style rule 1)."""
import subprocess
import sys

from tests.conftest import ROOT

BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'modules', 'backend', 'ldm_patched', 'modules_forge', 'gradio', 'ldm', 'sgm', 'k_diffusion'}:
            raise ImportError('core imported host module ' + name)
sys.meta_path.insert(0, Block())
import asag, asag.attention, asag.bench, asag.diagnostics, asag.guidance, asag.layers, asag.memory, asag.params, asag.reuse, asag.sinkhorn, asag.log
print(sorted(m for m in sys.modules if m.startswith('asag')))
"""


def test_core_imports_only_torch_and_stdlib():
    out = subprocess.run([sys.executable, "-c", BLOCKER], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "asag.hosts" not in out.stdout
