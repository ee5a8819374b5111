"""Check `make autograde`'s gradebook: on every autograded notebook the solved notebooks
(student "solved") score full marks on every autograded test cell, and the student edition
as released (student "student") scores zero on each of them: a build-it test that passes
without the student's code tests nothing.

Usage: python tests/check_autograde.py build/nbgrader/gradebook.db 02_patchnet 03_pedal_loss ...
"""

import sys

from nbgrader.api import Gradebook


def check(db: str, notebooks: list[str], assignment: str = "notebooks") -> list[str]:
    problems = []
    with Gradebook(f"sqlite:///{db}") as gb:
        for name in notebooks:
            for student, want in (("solved", "full"), ("student", "zero")):
                try:
                    nb = gb.find_submission_notebook(name, assignment, student)
                except Exception as err:  # MissingEntry: the notebook was not autograded
                    problems.append(f"{name} ({student}): not autograded ({err})")
                    continue
                tests = [
                    g for g in nb.grades if g.cell.cell_type == "code" and g.auto_score is not None
                ]
                if not tests:
                    problems.append(f"{name} ({student}): no autograded test cells")
                for g in tests:
                    ok = g.auto_score == g.max_score if want == "full" else g.auto_score == 0
                    if not ok:
                        problems.append(
                            f"{name} ({student}): test {g.name} scored {g.auto_score} of "
                            f"{g.max_score}; expected {want}"
                        )
                print(
                    f"{name:16s} {student:8s} {sum(g.auto_score for g in tests):g} of "
                    f"{sum(g.max_score for g in tests):g} points on {len(tests)} autograded tests"
                )
    return problems


if __name__ == "__main__":
    found = check(sys.argv[1], sys.argv[2:])
    for line in found:
        print("FAIL:", line)
    sys.exit(1 if found else 0)
