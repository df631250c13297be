"""Every public object has a docstring with a runnable example (the doctests run them)."""

import inspect

import pytest

import landprobe as lp


def public_objects():
    seen = {}
    modules = [lp] + [getattr(lp, n) for n in lp.__all__ if inspect.ismodule(getattr(lp, n, None))]
    for mod in modules:
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if inspect.ismodule(obj) or name.startswith("__") or not (inspect.isclass(obj) or callable(obj)):
                continue
            seen.setdefault(id(obj), (f"{mod.__name__}.{name}", obj))
    return sorted(seen.values())


@pytest.mark.parametrize("name, obj", public_objects(), ids=lambda x: x if isinstance(x, str) else "")
def test_public_object_has_runnable_example(name, obj):
    doc = inspect.getdoc(obj) or ""
    assert doc.strip(), f"{name} has no docstring"
    assert ">>>" in doc, f"{name}'s docstring has no runnable example"


def test_public_methods_of_probe_have_examples():
    for name, fn in inspect.getmembers(lp.LandscapeProbe, inspect.isfunction):
        if name.startswith("_"):
            continue
        assert ">>>" in (inspect.getdoc(fn) or ""), f"LandscapeProbe.{name} lacks an example"
