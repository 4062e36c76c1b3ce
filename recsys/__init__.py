"""recsys: the PaddlePaddle Book's chapter 05 recommender (MovieLens fusion model) on current Paddle."""

import os as _os
import warnings as _warnings

__version__ = "0.1.0"

# Paddle's C++ logging and a compiler-cache notice would drown the chapter's own output.
_os.environ.setdefault("GLOG_minloglevel", "2")
_warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)
