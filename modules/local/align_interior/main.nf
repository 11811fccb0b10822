/*
 * Stage 3 of one pair: sub-pixel refinement from interior texture, then the streamed warp of the
 * raw pre image into the post frame. Inputs are the stage-1 and stage-2 outputs.
 * Tool: e2m-align-interior (exo2micro/cli/align_interior.py).
 */
include { shellQuote; paramOptions; stageStatusHandler; imageOptions } from '../utils'

process ALIGN_INTERIOR {
    tag "${meta.id}"
    label 'process_pair'

    input:
    tuple val(meta),
        path(tiff, stageAs: 'tiff/*'),
        path(cache, stageAs: 'cache/*'),
        path(fits, stageAs: 'fits/*'),
        path(transforms, stageAs: 'transforms/*'),
        path(plots, stageAs: 'pipeline_output/*'),
        path(stages, stageAs: 'stages/*')
    val pipeline_params
    val checkpoint_format

    output:
    tuple val(meta),
        path('tiff/*', arity: '0..*'),
        path('cache/*', arity: '0..*'),
        path('fits/*', arity: '0..*'),
        path('transforms/*', arity: '0..*'),
        path('pipeline_output/*', arity: '0..*'),
        path('stages/03_align_interior*.json', arity: '0..*'),  // empty when the stage recorded a failure
        emit: state
    tuple val(meta), path('failure.tsv'), optional: true, emit: failure

    script:
    def args = task.ext.args ?: ''
    """
    e2m_attempt=${task.attempt}
    e2m_record=stages/03_align_interior
    e2m_status=0
    # stderr goes to e2m.err and, as it is written, to the task's .command.err
    { e2m-align-interior \\
        --sample ${shellQuote(meta.sample)} \\
        --dye ${shellQuote(meta.dye)} \\
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
    mkdir -p tiff transforms stages pipeline_output
    echo '{"post_to_pre": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}' > transforms/03_interior.json
    touch tiff/03_interior_aligned_pre.tif
    echo '{"stage": "align_interior", "status": "complete"}' > stages/03_align_interior.json
    touch pipeline_output/registration.png
    """
}
