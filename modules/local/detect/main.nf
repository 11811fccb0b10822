/*
 * Stage 5 of one pair: the noise model of the difference image, its significance image and the
 * catalogue of detected microbes (detections*.csv / .ecsv, two plots), and the pair's result.json
 * with the detection counts. Extra samplesheet columns (meta.extra) are passed as --meta
 * KEY=VALUE and end up in result.json. Tool: e2m-detect (exo2micro/cli/detect.py).
 *
 * Besides the pair files (published), it emits `report`: a folder with copies of result.json and
 * every stage's pipeline_output/*.png, which the summary needs for report.html.
 */
include { shellQuote; paramOptions; stageStatusHandler; reportBundle; imageOptions } from '../utils'

process DETECT {
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
        path('stages/05_detect*.json', arity: '0..*'),  // empty when the stage recorded a failure
        emit: state
    tuple val(meta), path('detections*', arity: '0..*'), emit: catalog
    tuple val(meta), path('result.json'), optional: true, emit: result
    tuple val(meta), path('e2m_pair', type: 'dir'), optional: true, emit: report
    tuple val(meta), path('failure.tsv'), optional: true, emit: failure

    script:
    def args = task.ext.args ?: ''
    def extra = meta.extra ?: [:]
    def meta_args = extra.collect { key, value -> '--meta ' + shellQuote("${key}=${value}") }.join(' ')
    """
    e2m_attempt=${task.attempt}
    e2m_record=stages/05_detect
    e2m_status=0
    # stderr goes to e2m.err and, as it is written, to the task's .command.err
    { e2m-detect \\
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
    ${reportBundle()}
    """

    stub:
    """
    mkdir -p tiff stages pipeline_output e2m_pair/pipeline_output
    touch tiff/05_detect_significance.tif
    printf 'id,x,y,flux,peak,snr,area_px,flags\\n' > detections.csv
    touch pipeline_output/detections.png pipeline_output/detection_snr_histogram.png
    echo '{"stage": "detect", "status": "complete"}' > stages/05_detect.json
    printf '{"sample": "%s", "dye": "%s", "status": "complete", "scale_estimate": 1.0}\\n' "${meta.sample}" "${meta.dye}" > result.json
    cp result.json e2m_pair/
    cp pipeline_output/*.png e2m_pair/pipeline_output/
    """
}
