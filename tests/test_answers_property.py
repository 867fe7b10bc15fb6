"""Property: every answer the hook accepts renders a project whose config validates and whose commands run."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_in_project
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hooks import default_answers, pre_gen

schema = pre_gen.load_config_module(Path(pre_gen.__file__).parents[1], "schema")

numbers = st.one_of(
    st.integers(min_value=-5, max_value=200_000).map(str),
    st.sampled_from(["007", "0", "1e3", "0.5", "00.5", " 12", "+3", "1_000", "7.0", "nan"]),
)
answers = st.fixed_dictionaries(
    {},
    optional={
        "num_classes": numbers,
        "image_size": numbers,
        "epochs": numbers,
        "lr": st.sampled_from(["0.005", "1e-3", "0", "-1", "fast", "1", "00.1"]),
        "max_jobs": numbers,
        "max_parallel_jobs": numbers,
        "batch_size_choices": st.sampled_from(["40,60", "8", "040", "1, 2 ,3", "40,40", ""]),
        "aws_region": st.sampled_from(["us-east-1", "cn-north-1", "us-gov-west-1", "xx-east-1", "eu-west-1"]),
        "role_arn": st.sampled_from(
            ["", "arn:aws:iam::123456789012:role/R", "arn:aws-cn:iam::123456789012:role/R"]
        ),
        "training_instance_type": st.sampled_from(
            ["ml.g4dn.xlarge", "ml.p3.2xlarge", "ml.trn1.2xlarge", "ml.g6.xlarge"]
        ),
        "endpoint_instance_type": st.sampled_from(["ml.m5.large", "ml.c5.2xlarge", "ml.inf2.xlarge"]),
        "backbone": st.sampled_from(schema.BACKBONES),
        "rule_set": st.sampled_from(schema.RULE_SET_NAMES),
        "use_spot": st.sampled_from(["yes", "no", "Y", "off", "maybe"]),
        "project_name": st.sampled_from(["Dogs", "Test", "Click", "Sagemaker", "A" * 80, "Cats & Dogs 2"]),
        # Answers the SDK or S3 takes but the code or the service cannot run with: refused at render.
        "training_framework_version": st.sampled_from(["2.8.0", "2.3.0", "2.2.0", "2.0.0", "2.5"]),
        "training_py_version": st.sampled_from(["py312", "py311", "py310"]),
        "s3_bucket": st.sampled_from(["", "my-bucket", "sthree-x", "x--table-s3", "a.b.c", "a..b", "x.mrap"]),
        "objective_type": st.sampled_from(schema.OBJECTIVE_TYPES),
        "dataset_url": st.sampled_from(["", "s3://my-bucket/d.zip", "s3://xn--b/d.zip", "s3://my-bucket"]),
        "lr_max": st.sampled_from(["0.01", "1e309", "11", "0.1"]),
    },
)


@pytest.mark.slow
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chosen=answers)
def test_accepted_answers_render_a_working_project(cookies, chosen: dict) -> None:
    full = default_answers(**chosen)  # and what cookiecutter derives from them (slug, image defaults)
    accepted = pre_gen.validate(full) == []
    result = cookies.bake(extra_context=chosen, template=str(pre_gen.find_template({})))
    assert (result.exit_code == 0) is accepted, (chosen, pre_gen.validate(full), result.exception)
    if not accepted:
        assert result.project_path is None or not Path(result.project_path).exists()
        return
    project = Path(result.project_path)
    import tomllib

    document = tomllib.loads((project / "config.toml").read_text(encoding="utf-8"))
    assert schema.validate(document) == []
    package = document["project"]["package"]
    for command in (["--help"], ["cost"]):
        run = run_in_project(project, "-m", package, *command, timeout=300)
        assert run.returncode == 0, (chosen, command, run.stderr[-2000:])
