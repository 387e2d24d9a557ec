"""The exported folder's contract, torch-free: what `hoe export` writes and what the runtime reads.

    io_spec    graph input/output names, dtypes and symbolic shapes (TensorSpec, bind_shapes)
    manifest   hoe_config.json: format version, file names, required sections, write / read / check /
               verify (sha256) / read_packed (experts, routers), swap_experts
    folder     Manifest: an exported folder opened and checked, with typed views for the runtime
    engine     the TensorRT engine folder (trt/engine.json): limits, profiles, buffer plans, compatibility
    parity     the one comparator of runners against a reference: tolerances, the float64 rule, ParityError
               (export validation's validation.json and `hoe bench parity`)

Export writes through it, the runtime reads through it; neither imports the other. It builds on
hoe.core's torch-free modules only (errors, names, packing, config, atomic, identity).
"""
