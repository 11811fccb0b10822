/*
 * Stage 4 of one pair: the scale k (Moffat; percentile and manual when asked), the difference
 * image(s) post - k * aligned_pre and the diagnostic plots. The tool also writes a result.json;
 * the pipeline's is stage 5's (DETECT), which adds the detections, so SUBTRACT does not emit it.
 * The pair's own image facts (meta.image) become its options (utils imageOptions).
 * Tool: e2m-subtract (exo2micro/cli/subtract.py).
 */
include { shellQuote; paramOptions; stageStatusHandler; imageOptions } from '../utils'

process SUBTRACT {
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
        path('stages/04_subtract*.json', arity: '0..*'),  // empty when the stage recorded a failure
        emit: state
    tuple val(meta), path('failure.tsv'), optional: true, emit: failure

    script:
    def args = task.ext.args ?: ''
    def extra = meta.extra ?: [:]
    def meta_args = extra.collect { key, value -> '--meta ' + shellQuote("${key}=${value}") }.join(' ')
    """
    e2m_attempt=${task.attempt}
    e2m_record=stages/04_subtract
    e2m_status=0
    # stderr goes to e2m.err and, as it is written, to the task's .command.err
    { e2m-subtract \\
        --sample ${shellQuote(meta.sample)} \\
        --dye ${shellQuote(meta.dye)} \\
        --pair-dir . \\
        --threads ${task.cpus} \\
        --checkpoint-format ${checkpoint_format} \\
        ${paramOptions(pipeline_params)} \\
        ${imageOptions(meta)} \\
        ${meta_args} \\
        ${args} \\
        2>&1 >&3 3>&- | tee e2m.err >&2 3>&-; } 3>&1 || e2m_status=\$?
    ${stageStatusHandler()}
    """

    stub:
    """
    mkdir -p tiff stages pipeline_output
    touch tiff/04_difference.tif
    touch pipeline_output/difference_image.png pipeline_output/ratio_histogram.png
    echo '{"stage": "subtract", "status": "complete"}' > stages/04_subtract.json
    """
}
