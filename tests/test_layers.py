"""Layers import downward: no module of gpt2kit imports from a layer above its own, not even inside a function.

Layers, lowest first (a module may import its own layer and those below):

0. errors, io, tokenizer, device (the CUDA-only decisions), settings (typed settings <-> flat form), prompts
   (templates and the streaming decoder: text only, on errors and the tokenizer)
1. model
2. checkpoint (the package: every file format), generation (and packed_decode, its CPU weight packing),
   quantization (int8 CPU inference)
3. distributed, data
4. eval
5. train
6. finetune
7. serve (the batching engine and the HTTP app), pipeline (the one-command run over every stage)
8. cli, the package's ``__init__``/``__main__`` (lazy imports allowed: they keep start-up fast)

Outside cli/ (and the package ``__init__``), imports of gpt2kit live at the top of the module.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import gpt2kit

ROOT = Path(gpt2kit.__file__).parent

LAYERS: list[tuple[str, ...]] = [
    ("gpt2kit.errors", "gpt2kit.io", "gpt2kit.tokenizer", "gpt2kit.version", "gpt2kit.device", "gpt2kit.settings",
     "gpt2kit.prompts"),
    ("gpt2kit.model",),
    ("gpt2kit.checkpoint", "gpt2kit.generation", "gpt2kit.packed_decode", "gpt2kit.quantization"),
    ("gpt2kit.distributed", "gpt2kit.data"),
    ("gpt2kit.eval",),
    ("gpt2kit.train",),
    ("gpt2kit.finetune",),
    ("gpt2kit.serve", "gpt2kit.pipeline"),
    ("gpt2kit.cli", "gpt2kit.__main__"),
]
TOP = len(LAYERS) - 1


def layer_of(module: str) -> int:
    """The layer of a dotted module name (the package itself counts as the top: its __init__ re-exports)."""
    if module == "gpt2kit":
        return TOP
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module}: not in any layer; add it to LAYERS in tests/test_layers.py")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def gpt2kit_imports(tree: ast.Module, module: str, is_package: bool):
    """(line, imported module, at top level) for every import of gpt2kit in ``tree``."""
    top_level = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                names = [".".join(base + ([node.module] if node.module else []))]
            else:
                names = [node.module or ""]
            if names[0] == "gpt2kit":  # from gpt2kit import x: x may be a submodule
                names = [f"gpt2kit.{a.name}" if (ROOT / a.name).exists() or (ROOT / f"{a.name}.py").exists()
                         else "gpt2kit" for a in node.names]
        else:
            continue
        for name in names:
            if name == "gpt2kit" or name.startswith("gpt2kit."):
                yield node.lineno, name, id(node) in top_level or _under_type_checking(tree, node)


def _under_type_checking(tree: ast.Module, target: ast.AST) -> bool:
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            if any(n is target for n in ast.walk(node)):
                return True
        if isinstance(node, ast.Try) and any(n is target for n in ast.walk(node)):
            return True
    return False


def test_every_import_goes_downward():
    problems = []
    modules = sorted(ROOT.rglob("*.py"))
    assert len(modules) > 30
    for path in modules:
        module = module_name(path)
        own = layer_of(module)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for line, name, at_top in gpt2kit_imports(tree, module, path.name == "__init__.py"):
            where = f"{path.relative_to(ROOT.parent)}:{line}"
            if layer_of(name) > own:
                problems.append(f"{where}: {module} (layer {own}) imports {name} (layer {layer_of(name)})")
            elif not at_top and own < TOP:
                problems.append(f"{where}: {module} imports {name} inside a function (only cli/ may)")
    assert not problems, "imports against the layering:\n" + "\n".join(problems)


def test_model_imports_nothing_but_its_config():
    tree = ast.parse((ROOT / "model" / "gpt.py").read_text(encoding="utf-8"))
    names = {name for _, name, _ in gpt2kit_imports(tree, "gpt2kit.model.gpt", False)}
    assert names <= {"gpt2kit.model.config"}, names


def test_the_checker_sees_an_upward_import():
    tree = ast.parse("def f():\n    from gpt2kit.cli.common import resolve_device\n")
    found = list(gpt2kit_imports(tree, "gpt2kit.train.distributed", False))
    assert found == [(2, "gpt2kit.cli.common", False)]
    assert layer_of(found[0][1]) > layer_of("gpt2kit.train.distributed")


def _imports_of_package(folder: str) -> dict[str, set[str]]:
    """{module: the gpt2kit modules it imports} for every module under ``gpt2kit/<folder>/``."""
    found = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        module = module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found[module] = {name for _, name, _ in gpt2kit_imports(tree, module, path.name == "__init__.py")}
    return found


def test_the_checkpoint_package_imports_only_the_layers_below_and_itself():
    allowed = (*LAYERS[0], *LAYERS[1], "gpt2kit.checkpoint")
    found = _imports_of_package("checkpoint")
    assert "gpt2kit.checkpoint.format" in found and "gpt2kit.checkpoint.load" in found
    wrong = {m: sorted(n for n in names if not any(n == p or n.startswith(p + ".") for p in allowed))
             for m, names in found.items()}
    assert not any(wrong.values()), wrong


def test_the_model_knows_nothing_about_files():
    # file formats (Hugging Face, OpenAI, gpt2kit's own) are the checkpoint package's; the model holds only the
    # key table that spells its parameter names
    found = _imports_of_package("model")
    assert "gpt2kit.model.hf_keys" in found
    wrong = {m: sorted(n for n in names if not (n.startswith("gpt2kit.model") or n == "gpt2kit.errors"))
             for m, names in found.items()}
    assert not any(wrong.values()), wrong


def test_prompts_know_only_text_and_tokens():
    # fine-tuning, sample, chat and serve all read templates from here, so it stands on nothing they build on
    tree = ast.parse((ROOT / "prompts.py").read_text(encoding="utf-8"))
    names = {name for _, name, _ in gpt2kit_imports(tree, "gpt2kit.prompts", False)}
    assert names <= {"gpt2kit.errors", "gpt2kit.tokenizer"}, names


def test_no_benchmark_script_shadows_an_installed_package():
    # a script runs with benchmarks/ first on sys.path: benchmarks/tokenizers.py made every script there import
    # itself for Hugging Face's tokenizers (and transformers broke)
    import importlib.metadata

    installed = {name.replace("-", "_").lower() for dist in importlib.metadata.distributions()
                 for name in [dist.metadata["Name"] or ""] + (dist.read_text("top_level.txt") or "").split()}
    scripts = {p.stem.lower() for p in (ROOT.parent / "benchmarks").glob("*.py")}
    assert "train" in scripts
    shadowing = scripts & (installed | set(sys.stdlib_module_names))
    assert not shadowing, f"benchmarks/ scripts named like installed modules: {sorted(shadowing)}"
