"""Nightly klantbeeld runs of the retail pipeline, as Airflow DAGs.

Two variants of the same job:

- ``klantbeeld_retail``: BashOperator, for workers that have the ``klantbeeld`` binary
  and the pipeline files installed (``/opt/klantbeeld``);
- ``klantbeeld_retail_k8s``: KubernetesPodOperator with the Docker image of this
  repository (the binary is the entrypoint).

Each run processes the dumps of the logical date ``{{ ds }}``; re-running a date gives the
same result, and a failed run leaves the last published output untouched, so Airflow's
retries are safe. Exit codes: 2 configuration, 3 input (dumps missing or bad), 4 a data
test failed; all fail the task. Logs are JSON lines with the run id on every line.
"""

from datetime import datetime, timedelta

try:  # Airflow 3
    from airflow.sdk import DAG
except ImportError:  # Airflow 2
    from airflow import DAG

try:
    from airflow.providers.standard.operators.bash import BashOperator
except ImportError:  # Airflow 2
    from airflow.operators.bash import BashOperator

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

INPUT = "s3://dumps/retail/{{ ds }}"
OUTPUT = "s3://golden/retail"

ARGS = [
    "--log-format", "json",
    "run", "/opt/klantbeeld/pipelines/retail.yaml",
    "--var", "run_date={{ ds }}",
    "--var", f"input={INPUT}",
    "--var", f"output={OUTPUT}",
    "--memory-limit", "6GB",
]

default_args = {
    "owner": "data-engineering",
    "retries": 2,
    "retry_delay": timedelta(minutes=15),
}

with DAG(
    dag_id="klantbeeld_retail",
    description="Golden customer table from the six retail systems",
    schedule="0 3 * * *",
    start_date=datetime(2026, 11, 1),
    catchup=False,
    max_active_runs=1,  # one run at a time per output
    default_args=default_args,
    tags=["klantbeeld", "customers"],
) as dag:
    BashOperator(
        task_id="golden_customers",
        bash_command="klantbeeld " + " ".join(ARGS),
        # Credentials come from the worker's environment (AWS_*), never from the DAG.
        append_env=True,
        execution_timeout=timedelta(hours=4),
    )

with DAG(
    dag_id="klantbeeld_retail_k8s",
    description="Golden customer table, in a Kubernetes pod",
    schedule="0 3 * * *",
    start_date=datetime(2026, 11, 1),
    catchup=False,
    max_active_runs=1,
    default_args=default_args,
    tags=["klantbeeld", "customers"],
) as dag_k8s:
    KubernetesPodOperator(
        task_id="golden_customers",
        name="klantbeeld-retail",
        image="registry.example.com/klantbeeld:0.1.0",
        arguments=ARGS,
        # AWS credentials from a Kubernetes secret, as environment variables.
        env_from=[{"secretRef": {"name": "klantbeeld-s3"}}],
        container_resources={"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "8Gi"}},
        get_logs=True,
        on_finish_action="delete_pod",
        execution_timeout=timedelta(hours=4),
    )
