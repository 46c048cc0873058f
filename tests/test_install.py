"""Packaging: the namespace mapping and the lazy imports the design card promises."""
import subprocess
import sys


def test_import_is_light_and_namespaced():
    code = (
        "import sys, neurosim, neurosim.encoders, neurosim.models, neurosim.hardware\n"
        "heavy = [m for m in ('triton', 'lava', 'norse', 'nir', 'nirtorch', 'h5py') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "import importlib.util\n"
        "assert importlib.util.find_spec('models') is None, 'a global models package was installed'\n"
        "assert importlib.util.find_spec('encoders') is None and importlib.util.find_spec('hardware') is None\n"
        "print(neurosim.__version__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
