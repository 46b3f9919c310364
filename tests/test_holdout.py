"""The training data's carving: a fixed subset of train and a validation split held out of it."""

from __future__ import annotations

from collections import Counter

import pytest

from layerwise.runtime.errors import ConfigError, DataError
from layerwise.settings import DataSource


@pytest.fixture(scope="module")
def mrpc(glue_dir):
    return DataSource("mrpc", str(glue_dir / "MRPC")).load()


def test_subset_and_validation_are_fixed_disjoint_and_stratified(glue_dir, mrpc) -> None:
    source = DataSource("mrpc", str(glue_dir / "MRPC"), train_subset=1000, validation_fraction=0.2)
    a, b = source.load(), source.load()
    assert a.train == b.train and a.validation == b.validation  # the same carving in every run
    assert len(a.validation) == 200 and len(a.train) == 800
    train_ids = {(e.text, e.text_pair) for e in a.train}
    val_ids = {(e.text, e.text_pair) for e in a.validation}
    assert not train_ids & val_ids
    everything = {(e.text, e.text_pair) for e in mrpc.train}
    assert train_ids | val_ids <= everything and a.dev == mrpc.dev  # dev untouched
    # stratified: each split's share of paraphrases is the file's, to within one example
    share = Counter(e.label for e in mrpc.train)[1] / len(mrpc.train)
    for split in (a.train, a.validation, a.train + a.validation):
        assert abs(Counter(e.label for e in split)[1] - share * len(split)) <= 1.0
    # the subset does not depend on the validation fraction: the same 1000 examples are carved
    whole = DataSource("mrpc", str(glue_dir / "MRPC"), train_subset=1000).load()
    assert {(e.text, e.text_pair) for e in whole.train} == train_ids | val_ids


def test_no_validation_split_by_default(mrpc) -> None:
    assert mrpc.validation is None


@pytest.mark.parametrize("kwargs, flag", [({"validation_fraction": 1.0}, "--validation-fraction"),
                                          ({"validation_fraction": -0.1}, "--validation-fraction"),
                                          ({"train_subset": 1}, "--train-subset")])
def test_bad_carving_settings_name_their_flag(kwargs, flag) -> None:
    with pytest.raises(ConfigError, match=flag):
        DataSource("mrpc", **kwargs)


def test_a_subset_larger_than_train_names_the_flag(glue_dir) -> None:
    with pytest.raises(DataError, match="--train-subset 99999 is more than the 3668 training examples"):
        DataSource("mrpc", str(glue_dir / "MRPC"), train_subset=99999).load()
