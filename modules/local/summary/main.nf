/*
 * Batch summary: one row per expected pair (complete, skipped with its reason, or failed with
 * stage, exit code and attempts), the Problems section, the sample x dye microbe counts
 * (counts.tsv), manifest.json and report.html.
 * Tool: e2m-summary (exo2micro/cli/summary.py).
 */
include { shellQuote } from '../utils'

process SUMMARY {
    tag "${meta.id}"
    label 'process_single'

    input:
    tuple val(meta), path(samplesheet), path(skipped)
    path failures
    // One folder per finished pair (result.json + pipeline_output/*.png), staged as
    // pairs/<n>/e2m_pair since they share one name.
    path pairs, stageAs: 'pairs/*/e2m_pair', arity: '0..*'
    // code version, commit, container, ... (main.nf): written into manifest.json
    val provenance

    output:
    tuple val(meta), path('summary.tsv'), emit: tsv
    tuple val(meta), path('summary.md'), emit: md
    tuple val(meta), path('counts.tsv'), emit: counts
    tuple val(meta), path('manifest.json'), emit: manifest
    tuple val(meta), path('report.html'), emit: html
    tuple val(meta), path('versions.yml'), emit: versions

    script:
    def args = task.ext.args ?: ''
    def failures_option = failures ? "--failures ${failures}" : ''
    def results = pairs.collect { pair -> "${pair}/result.json" }.join(' ')
    def provenance_options = provenance.collect { key, value -> '--provenance ' + shellQuote("${key}=${value}") }.join(' ')
    """
    e2m-summary \\
        --outdir . \\
        --samplesheet ${samplesheet} \\
        --skipped ${skipped} \\
        ${failures_option} \\
        ${provenance_options} \\
        --versions versions.yml \\
        --threads ${task.cpus} \\
        ${args} \\
        ${results}
    """

    stub:
    """
    printf 'sample\\tdye\\tstatus\\n' > summary.tsv
    printf '# exo2micro summary\\n' > summary.md
    printf 'sample\\n' > counts.tsv
    printf '{"pairs": []}\\n' > manifest.json
    printf '<html><body>exo2micro summary</body></html>\\n' > report.html
    printf 'exo2micro: stub\\n' > versions.yml
    """
}
