"""Run the chapter's own fluid-era ops in Paddle's legacy static IR (FLAGS_enable_pir_api=0) as a test oracle.

    python tests/legacy_oracle.py IN.npz OUT.npz

IN holds `title_emb`, `cat_emb`, `conv_w`, `conv_b` and the LoD inputs `titles`/`title_lens`,
`cats`/`cat_lens` (ids concatenated, lengths per sample). OUT gets `title` (embedding ->
sequence_conv(filter 3, tanh) -> sequence_pool(sum)) and `category` (embedding -> sequence_pool(sum)).
"""

import os
import sys

os.environ["FLAGS_enable_pir_api"] = "0"

import numpy as np  # noqa: E402
import paddle  # noqa: E402

inp = dict(np.load(sys.argv[1]))
paddle.enable_static()
main, startup = paddle.static.Program(), paddle.static.Program()
with paddle.static.program_guard(main, startup):
    titles = paddle.static.data("titles", [-1], "int64", lod_level=1)
    cats = paddle.static.data("cats", [-1], "int64", lod_level=1)
    title_emb = paddle.static.nn.embedding(
        titles, inp["title_emb"].shape, param_attr=paddle.ParamAttr(name="title_emb")
    )
    cat_emb = paddle.static.nn.embedding(cats, inp["cat_emb"].shape, param_attr=paddle.ParamAttr(name="cat_emb"))
    conv = paddle.static.nn.sequence_conv(
        title_emb,
        num_filters=inp["conv_w"].shape[1],
        filter_size=3,
        act="tanh",
        param_attr=paddle.ParamAttr(name="conv_w"),
        bias_attr=paddle.ParamAttr(name="conv_b"),
    )
    title = paddle.static.nn.sequence_pool(conv, pool_type="sum")
    category = paddle.static.nn.sequence_pool(cat_emb, pool_type="sum")
exe = paddle.static.Executor(paddle.CPUPlace())
exe.run(startup)
scope = paddle.static.global_scope()
for name in ("title_emb", "cat_emb", "conv_w", "conv_b"):
    scope.find_var(name).get_tensor().set(
        inp[name].reshape(scope.find_var(name).get_tensor().shape()), paddle.CPUPlace()
    )


def lod(ids, lens):
    return paddle.base.create_lod_tensor(ids.reshape(-1), [lens.tolist()], paddle.CPUPlace())


out = exe.run(
    main,
    feed={"titles": lod(inp["titles"], inp["title_lens"]), "cats": lod(inp["cats"], inp["cat_lens"])},
    fetch_list=[title, category],
)
np.savez(sys.argv[2], title=np.array(out[0]), category=np.array(out[1]))
