"""KoboldCpp's tests say exactly what is missing when KOBOLDCPP_DIR is not a built checkout."""

from __future__ import annotations

import pytest

from bridge.tests.real_backends import koboldcpp_dir


def test_without_the_variable_the_message_says_to_set_it(monkeypatch):
    monkeypatch.delenv("KOBOLDCPP_DIR", raising=False)
    with pytest.raises(AssertionError) as failure:
        koboldcpp_dir()
    assert str(failure.value) == (
        "KoboldCpp's tests need KOBOLDCPP_DIR: the folder of a KoboldCpp 1.76 checkout built "
        "with its own `make` (README: Development, real backends)."
    )


def test_a_folder_that_is_not_koboldcpp_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("KOBOLDCPP_DIR", str(tmp_path))
    with pytest.raises(AssertionError, match=f"{tmp_path}/koboldcpp.py does not exist"):
        koboldcpp_dir()


def test_an_unbuilt_checkout_is_told_to_run_make(monkeypatch, tmp_path):
    (tmp_path / "koboldcpp.py").write_text("")
    monkeypatch.setenv("KOBOLDCPP_DIR", str(tmp_path))
    with pytest.raises(AssertionError) as failure:
        koboldcpp_dir()
    assert str(failure.value).endswith(
        f"{tmp_path}/koboldcpp_default.so is missing: run `make` in {tmp_path}."
    )
    (tmp_path / "koboldcpp_default.so").write_text("")
    assert koboldcpp_dir() == tmp_path
