"""MLflow "model from code" entry point: logging passes this file, loading runs it (no pickled Python objects).

MLflow executes this file when it loads a registered rigpose lifter; `set_model` names the pyfunc class. Loading
needs the `rigpose` package installed beside MLflow (the model's pip requirements name it).
"""

from mlflow.models import set_model

from rigpose.tracking.pyfunc import LifterModel

set_model(LifterModel())
