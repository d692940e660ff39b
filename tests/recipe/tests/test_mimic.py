import torch

from gallery import mimic
from gallery.check import no_grad_reaches
from gallery.core.cli import compose


def test_the_teacher_never_gets_a_grad_and_the_student_learns(tmp_path):
    summary = mimic.train(compose("mimic", ["device=cpu", f"out_dir={tmp_path}"]))
    assert not summary["teacher_has_grad"]
    assert summary["mse"] < 0.5 * summary["mse_at_start"]


def test_teacher_grad_writes_grad_into_the_teacher(tmp_path):
    summary = mimic.train(compose("mimic", ["device=cpu", "mistake=teacher_grad", "steps=20",
                                                f"out_dir={tmp_path}"]))
    assert summary["teacher_has_grad"]


# --- this example's row of the check table (tests/test_check.py) ---

def check_step(mistake: str) -> None:
    """This example's step under gallery.check: the pattern passes; the mistake fails with the
    sentence its `caught` names."""
    torch.manual_seed(0)
    make, step = mimic.BY_MISTAKE[mistake]
    student, teacher = mimic.mlp(8), make(mimic.mlp(8))
    optimizer = torch.optim.Adam(student.parameters())
    with no_grad_reaches(teacher=teacher):
        step(student, teacher, optimizer, torch.randn(16, 8))
