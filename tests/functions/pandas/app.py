"""A function whose init is its imports: numpy and pandas (the 47 MB zip of issue 17 part 5)."""
import numpy as np
import pandas as pd

FRAME = pd.DataFrame({"x": np.arange(1000), "y": np.arange(1000) ** 2})


def handler(event, context):
    return {"rows": int(len(FRAME)), "sum": int(FRAME["y"].sum())}
