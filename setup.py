from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
BASE = [
    line.strip()
    for line in (ROOT / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setup(
    name="neurosim",
    version="0.1.0",
    description="Neuromorphic simulation toolkit: spike encoders, LIF backends, spiking transformers, "
    "SynOps/energy estimation and export to Lava-DL and NIR",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # encoders/, models/ and hardware/ live at the top of the repository but install under the
    # neurosim namespace, so no global `models` package is ever created.
    packages=[
        "neurosim",
        "neurosim.neurons",
        "neurosim.layers",
        "neurosim.training",
        "neurosim.energy",
        "neurosim.kernels",
        "neurosim.encoders",
        "neurosim.models",
        "neurosim.hardware",
    ],
    package_dir={
        "neurosim": "neurosim",
        "neurosim.encoders": "encoders",
        "neurosim.models": "models",
        "neurosim.hardware": "hardware",
    },
    package_data={"neurosim.hardware": ["*.txt"]},
    # torch: any CUDA or CPU build >= 2.1 the user already has is kept. norse is a base requirement but is
    # installed by scripts/env.sh with --no-deps (its torchvision dependency breaks beside a CPU torch).
    install_requires=["torch>=2.1"] + BASE,
    extras_require={
        "norse": ["norse==1.1.0"],
        "dev": [
            line.strip()
            for line in (ROOT / "requirements-dev.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ],
    },
    entry_points={"console_scripts": ["neurosim=neurosim.cli:main"]},
)
