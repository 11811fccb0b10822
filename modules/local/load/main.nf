/*
 * Stage 1 of one (sample, dye) pair: read both raw TIFFs once, pick the signal channel, write
 * full-resolution single-channel images, alignment pyramids and the stage record. The pair's own
 * image facts (meta.image) become the tool's --pixel-size-um, ... options (utils imageOptions).
 * Tool: e2m-load (exo2micro/cli/load.py).
 */
include { shellQuote; paramOptions; stageStatusHandler; imageOptions } from '../utils'

process LOAD {
    tag "${meta.id}"
    label 'process_pair'

    input:
    tuple val(meta), path(pre, stageAs: 'raw_pre/*'), path(post, stageAs: 'raw_post/*')
    val pipeline_params
    val checkpoint_format

    output:
    tuple val(meta),
        path('tiff/*', arity: '0..*'),
        path('cache/*', arity: '0..*'),
        path('fits/*', arity: '0..*'),
        path('transforms/*', arity: '0..*'),
        path('pipeline_output/*', arity: '0..*'),
        path('stages/01_load*.json', arity: '0..*'),  // empty when the stage recorded a failure
        emit: state
    tuple val(meta), path('failure.tsv'), optional: true, emit: failure

    script:
    def args = task.ext.args ?: ''
    """
    e2m_attempt=${task.attempt}
    e2m_record=stages/01_load
    e2m_status=0
    # stderr goes to e2m.err and, as it is written, to the task's .command.err
    { e2m-load \\
        --sample ${shellQuote(meta.sample)} \\
        --dye ${shellQuote(meta.dye)} \\
        --pre ${shellQuote(pre)} \\
        --post ${shellQuote(post)} \\
        --pair-dir . \\
        --threads ${task.cpus} \\
        --checkpoint-format ${checkpoint_format} \\
        ${paramOptions(pipeline_params)} \\
        ${imageOptions(meta)} \\
        ${args} \\
        2>&1 >&3 3>&- | tee e2m.err >&2 3>&-; } 3>&1 || e2m_status=\$?
    ${stageStatusHandler()}
    """

    stub:
    """
    mkdir -p tiff cache stages
    touch tiff/01_pre_signal.tif tiff/01_post_signal.tif
    touch cache/01_pre_pyramid.tif cache/01_post_pyramid.tif
    echo '{"stage": "load", "status": "complete"}' > stages/01_load.json
    """
}
