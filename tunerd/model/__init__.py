"""The model wing: the network as data, and running it in-process with the numpy kernels.

Owns the IR (graph, ops with binding, flops and onnx_form_ops, passes), the cut into units (units),
the execution plan (plan), ONNX (onnx_read checks a file, onnx_io imports and exports it, onnx_eval
folds and shapes single nodes with onnx's own tools), the zoo (builder, zoo), the shared weights file
(weights) and the loader with its cache (loader). It may import the ground floor (tunerd.errors, tunerd.files) and tunerd.kernels;
it knows nothing of processes, platforms, costs or the search.
"""
