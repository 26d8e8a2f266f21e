"""Loads the example DAGs with Airflow's DagBag and checks them; exits non-zero on any
import error or a DAG that does not run klantbeeld for the logical date."""

import inspect
import os
import sys
import tempfile

os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp()
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"

try:  # Airflow 3.1 and later
    from airflow.dag_processing.dagbag import DagBag
except ImportError:
    from airflow.models.dagbag import DagBag

kwargs = {"include_examples": False} if "include_examples" in inspect.signature(DagBag.__init__).parameters else {}
bag = DagBag(dag_folder=sys.argv[1], **kwargs)
assert not bag.import_errors, bag.import_errors
assert {"klantbeeld_retail", "klantbeeld_retail_k8s"} <= set(bag.dag_ids), bag.dag_ids

bash = bag.dags["klantbeeld_retail"].get_task("golden_customers")
assert bash.bash_command.startswith("klantbeeld "), bash.bash_command
assert "run_date={{ ds }}" in bash.bash_command and "input=s3://dumps/retail/{{ ds }}" in bash.bash_command
pod = bag.dags["klantbeeld_retail_k8s"].get_task("golden_customers")
assert "run_date={{ ds }}" in pod.arguments, pod.arguments
assert pod.image.endswith("klantbeeld:0.1.0"), pod.image
for dag in bag.dags.values():
    assert dag.max_active_runs == 1, dag.dag_id
print("dags ok:", ", ".join(sorted(bag.dag_ids)))
