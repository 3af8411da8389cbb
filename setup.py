from setuptools import find_packages, setup

setup(
    name="scoreflow",
    version="0.1.0",
    description="ScoreFlow (Score-DPO workflow optimisation) and MAgICoRE in plain PyTorch",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # One top-level import name, ours (README, "Layout": why kernels/ lives inside scoreflow/).
    packages=find_packages(include=["scoreflow", "scoreflow.*"]),
    # The benchmark splits ship with the package (scoreflow/data/PROVENANCE.md): a fresh install
    # runs `python -m scoreflow.train` with nothing beside it.
    package_data={"scoreflow": ["PAPERS.md", "data/PROVENANCE.md", "data/aflow/*.jsonl", "data/magicore/*.json"]},
    install_requires=[
        "torch>=2.3",
        "safetensors",
        "tokenizers",
        "sentencepiece",
        "httpx",
        "numpy",
        "gguf",
    ],
    extras_require={
        # Oracles and baselines: imported by tests/ and bench/ only, never by the library.
        "test": ["pytest", "transformers", "peft", "trl", "openai", "jinja2", "psutil", "matplotlib"],
        "plot": ["matplotlib"],  # figures of the result tables (scoreflow/figures.py)
    },
)
