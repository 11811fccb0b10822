/*
 * Synthetic raw batch for the `test` profile: a few small pre/post pairs with a known transform
 * (and, with --broken, one pair that must fail or be skipped), in the standard raw layout.
 * Tool: e2m-synth (exo2micro/cli/synth.py).
 */
process SYNTH {
    tag "${meta.id}"
    label 'process_single'

    input:
    tuple val(meta), val(opts)

    output:
    tuple val(meta), path('raw', type: 'dir'), emit: raw_dir

    script:
    def args = task.ext.args ?: ''
    def broken = opts.broken ? '--broken' : ''
    """
    e2m-synth \\
        --raw-dir raw \\
        --pairs ${opts.pairs} \\
        --width ${opts.width} \\
        --height ${opts.height} \\
        --seed ${opts.seed} \\
        ${broken} \\
        --threads ${task.cpus} \\
        ${args}
    """

    stub:
    """
    mkdir -p raw/SYNTH01
    touch raw/SYNTH01/SYNTH01_PreStain_DAPI.tif raw/SYNTH01/SYNTH01_PostStain_DAPI.tif
    """
}
