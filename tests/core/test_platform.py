"""The one platform rule: `auto` takes cuda, then npu, then cpu; a missing one is refused."""

from __future__ import annotations

import pytest

from pypto_serving.core.config import ServingConfig
from pypto_serving.core.platform import PLATFORMS, PlatformUnavailableError, choose_platform


@pytest.mark.parametrize(("present", "chosen"), [
    ([], "cpu"), (["npu"], "npu"), (["cuda"], "cuda"), (["npu", "cuda"], "cuda"),
])
def test_auto_prefers_cuda_then_npu_then_cpu(present, chosen):
    assert choose_platform("auto", present) == chosen


def test_a_named_platform_is_kept_when_present_and_refused_when_not():
    assert choose_platform("cpu", ["cuda", "npu"]) == "cpu"
    assert choose_platform("npu", ["cuda", "npu"]) == "npu"
    with pytest.raises(PlatformUnavailableError,
                       match=r"cluster.platform='cuda' but no cuda device is usable here "
                             r"\(torch sees none\); set cluster.platform to 'cpu' \(gloo\) or "
                             "'auto'"):
        choose_platform("cuda", ["npu"], detected_by="torch sees none")
    with pytest.raises(ValueError, match="platform 'gpu' is not one of auto, cpu, cuda, npu"):
        choose_platform("gpu", [])


def test_the_config_admits_exactly_the_rules_platforms():
    schema = ServingConfig.model_json_schema()
    cluster = schema["$defs"]["ClusterSpec"]["properties"]["platform"]
    assert tuple(cluster["enum"]) == PLATFORMS
