/*
 * Discovery: find every (sample, dye) pair in a raw directory or read a samplesheet, check it
 * (strict: fail listing every problem; lenient: skip and list), validate the pipeline
 * parameters up front, and write the resolved samplesheet with per-pair resource estimates
 * (mem_bytes, time_s, from the TIFF headers only) plus the list of skipped pairs.
 * Tool: e2m-discover (exo2micro/cli/discover.py).
 */
include { shellQuote; paramOptions } from '../utils'

process DISCOVER {
    tag "${meta.id}"
    label 'process_single'
    // Always look at the disk again: new or removed raw files must be seen on -resume.
    cache false

    input:
    // Exactly one of raw_dir / samplesheet is given (the other is an empty list). With a
    // samplesheet, its image files are staged too (as links, only so that containers see them).
    tuple val(meta), path(raw_dir), path(samplesheet), path(sheet_images, stageAs: 'e2m_inputs/*/*')
    val opts

    output:
    tuple val(meta), path('pairs.csv'), emit: pairs
    tuple val(meta), path('skipped.tsv'), emit: skipped

    script:
    def args = task.ext.args ?: ''
    // The real location (not the link in this work folder): the paths written to pairs.csv stay
    // valid, and stay the same from run to run, and relative samplesheet paths resolve against
    // the samplesheet's own folder.
    def source = raw_dir
        ? '--raw-dir "$(readlink -f ' + shellQuote(raw_dir) + ')"'
        : '--input "$(readlink -f ' + shellQuote(samplesheet) + ')"'
    def samples = opts.samples ? "--samples ${shellQuote(opts.samples)}" : ''
    def dyes = opts.dyes ? "--dyes ${shellQuote(opts.dyes)}" : ''
    def lenient = opts.lenient ? '--lenient' : ''
    """
    e2m-discover \\
        ${source} \\
        ${samples} \\
        ${dyes} \\
        ${lenient} \\
        ${paramOptions(opts.pipeline_params)} \\
        --estimates \\
        --out pairs.csv \\
        --skipped skipped.tsv \\
        --threads ${task.cpus} \\
        --estimate-threads ${opts.pair_cpus} \\
        ${args}
    """

    stub:
    """
    touch stub_PreStain_DAPI.tif stub_PostStain_DAPI.tif
    printf 'sample,dye,pre,post,mem_bytes,time_s\\n' > pairs.csv
    printf 'STUB,DAPI,%s/stub_PreStain_DAPI.tif,%s/stub_PostStain_DAPI.tif,1073741824,60\\n' "\$PWD" "\$PWD" >> pairs.csv
    printf 'sample\\tdye\\treason\\n' > skipped.tsv
    """
}
