/*
 * Stage 2 of one pair: coarse similarity transform from the tissue footprints.
 * Inputs are the stage-1 outputs, staged under their pair-folder names (tiff/, cache/, ...).
 * Tool: e2m-align-boundary (exo2micro/cli/align_boundary.py).
 */
include { shellQuote; paramOptions; stageStatusHandler; imageOptions } from '../utils'

process ALIGN_BOUNDARY {
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
        path('stages/02_align_boundary*.json', arity: '0..*'),  // empty when the stage recorded a failure
        emit: state
    tuple val(meta), path('failure.tsv'), optional: true, emit: failure

    script:
    def args = task.ext.args ?: ''
    """
    e2m_attempt=${task.attempt}
    e2m_record=stages/02_align_boundary
    e2m_status=0
    # stderr goes to e2m.err and, as it is written, to the task's .command.err
    { e2m-align-boundary \\
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
    mkdir -p transforms stages pipeline_output
    echo '{"post_to_pre": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}' > transforms/02_boundary.json
    echo '{"stage": "align_boundary", "status": "complete"}' > stages/02_align_boundary.json
    touch pipeline_output/boundary_alignment.png
    """
}
