"""Hydra's own launcher test suites (hydra.test_utils.launcher_common_tests) on hydra/launcher=gpus."""
import pytest
from hydra.test_utils.launcher_common_tests import BatchedSweeperTestSuite, LauncherTestSuite

from hydra_plugins.hybrid_exp_launcher import register

register()  # as the CLI does: whatever the install, this process knows the launcher
# The suites expect jobs to run in their output dir (Hydra < 1.2); this test session runs at
# version_base 1.3 (set by importing hybrid_exp.cli), so ask for it explicitly.
OVERRIDES = ["hydra.job.chdir=True", "hydra.launcher.n_jobs=2"]


@pytest.mark.slow
@pytest.mark.parametrize("launcher_name, overrides", [("gpus", OVERRIDES)])
class TestGPULauncher(LauncherTestSuite):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("launcher_name, overrides",
                         [("gpus", ["hydra.sweeper.max_batch_size=2", *OVERRIDES])])
class TestGPULauncherBatched(BatchedSweeperTestSuite):
    pass


def test_the_suites_run_on_this_projects_launcher():
    """What the suites above exercise is ours: Hydra resolves hydra/launcher=gpus to GPULauncher."""
    from hydra.core.plugins import Plugins
    from hydra.plugins.launcher import Launcher

    from hydra_plugins.hybrid_exp_launcher.gpus import GPULauncher

    assert GPULauncher in Plugins.instance().discover(Launcher)
