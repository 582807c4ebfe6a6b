"""pytest turns warnings raised from the project's own modules into errors (pyproject filterwarnings)."""

import warnings

import numpy as np
import pytest
import torch


@pytest.mark.parametrize("module", ["components.io", "pipelines.train_sit", "dashboards.build", "components"])
def test_a_warning_from_project_code_fails_the_test(module):
    with pytest.raises(UserWarning):
        warnings.warn_explicit("from our code", UserWarning, f"{module.replace('.', '/')}.py", 1, module=module)


@pytest.mark.parametrize("module", ["torch.nn.modules.module", "lpips.pretrained_networks", "componentsx"])
def test_third_party_warnings_stay_warnings(module):
    with pytest.warns(UserWarning):
        warnings.warn_explicit("from a library", UserWarning, "lib.py", 1, module=module)


def test_latent_store_labels_are_writable(tmp_path):
    """torch.from_numpy of a read-only array warns: the store hands out a copy (pandas gives read-only views)."""
    import pandas as pd

    from components.generator.store import LatentStore

    store = LatentStore.__new__(LatentStore)
    store.index = pd.DataFrame({"label": [3, 1, 2]})
    labels = store.labels
    assert labels.flags.writeable
    assert torch.from_numpy(labels).tolist() == [3, 1, 2]
    assert np.shares_memory(labels, store.index["label"].to_numpy()) is False
