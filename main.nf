#!/usr/bin/env nextflow
/*
 * exo2micro: align pre-/post-stain fluorescence images of mineral samples, subtract the
 * autofluorescence, keep the microbes. One task per (sample, dye) pair and stage.
 *
 *   nextflow run . -profile test,docker              small synthetic batch
 *   nextflow run . --raw_dir raw/ --outdir results    a raw directory (one folder per sample)
 *   nextflow run . --input samplesheet.csv --outdir results
 *
 * Parameters: nextflow_schema.json (also `exo2micro params`); documentation: docs/usage.md.
 * This entry workflow is the only place that reads `params`; everything below receives values.
 */
include { SYNTH     } from './modules/local/synth'
include { DISCOVER  } from './modules/local/discover'
include { EXO2MICRO } from './workflows/exo2micro'

/*
 * The pipeline parameters of exo2micro/params.py (REGISTRY), by stage. A stage tool receives the
 * parameters of its own and earlier stages, so changing a stage-4 parameter re-runs only stage 4
 * on -resume. tests/nextflow checks this table against the registry and nextflow_schema.json.
 */
def registryParametersByStage() {
    return [
        1: ['pad', 'pixel_size_um', 'channel'],
        2: [
            'use_edges', 'boundary_width', 'boundary_smooth', 'rotation_search', 'angle_range',
            'angle_step', 'scale_search', 'scale_min', 'scale_max', 'scale_step', 'multiscale',
            'down_scale', 'fine_ecc', 'max_translation', 'max_rotation', 'max_scale_delta',
            'max_scale_diff', 'stopit', 'stopdelta', 'save_all_intermediates',
        ],
        3: ['interior_ecc', 'interior_blur_base', 'interior_max_correction', 'interior_min_inlier_ratio'],
        4: ['scale_percentile', 'manual_scale', 'k_model', 'pre_exposure_s', 'post_exposure_s'],
        5: ['detect_threshold', 'detect_min_area', 'detect_deblend'],
    ]
}

// stage -> [ name: value ] of every registry parameter of stages <= stage
def stageParameters(all_params) {
    def by_stage = registryParametersByStage()
    def result = [:]
    (1..5).each { stage ->
        def names = (1..5).findAll { s -> s <= stage }.collectMany { s -> by_stage[s] }
        result[stage] = names.collectEntries { name -> [name, all_params[name]] }
    }
    return result
}

def typeMatches(type, value) {
    if (type instanceof List) {
        return type.any { one -> typeMatches(one, value) }
    }
    if (type == 'integer') {
        return value instanceof Integer || value instanceof Long || value instanceof BigInteger
    }
    if (type == 'number') {
        return value instanceof Number
    }
    if (type == 'boolean') {
        return value instanceof Boolean
    }
    // strings: Nextflow turns command-line values that look like numbers into numbers
    return value instanceof CharSequence || value instanceof Number
}

/*
 * Check params against nextflow_schema.json: unknown names (listing the valid ones), types,
 * ranges, allowed values, and as nf-schema 2 does: `required` (per group), `pattern` (a regular
 * expression searched in the value, JSON Schema style), and for `format: file-path` /
 * `directory-path` a path of the wrong kind, or a missing one where `exists: true`. Returns a
 * list of messages (empty when everything is valid). The pipeline does not need the nf-schema
 * plugin (no download at run time); the stage tools validate the parameters again with
 * exo2micro's registry.
 */
def validateParameters(all_params, schema_file) {
    def schema = new groovy.json.JsonSlurper().parseText(schema_file.text)
    def properties = [:]
    schema['$defs'].each { _group_name, group -> properties.putAll(group['properties']) }
    def errors = []
    def unknown = all_params.keySet().findAll { name ->
        !properties.containsKey(name) && !properties.containsKey(name.replaceAll(/([A-Z])/, '_$1').toLowerCase()) && !isSiteParameter(name)
    }
    unknown.each { name ->
        def near = closestName(name, properties.keySet())
        def hint = near ? " (did you mean --${near}?)" : ''
        errors << "unknown parameter --${name}${hint}; valid parameters: ${properties.keySet().sort().join(', ')}"
    }
    schema['$defs'].each { _group_name, group ->
        (group['required'] ?: []).findAll { name -> all_params[name] == null || all_params[name] == '' }.each { name ->
            errors << "--${name} is required: ${group['properties'][name]?.description ?: ''}".toString().trim()
        }
    }
    properties.each { name, spec ->
        def value = all_params[name]
        if (value == null) {
            return
        }
        errors.addAll(pathErrors(name, spec, value))
        if (spec.pattern && value instanceof CharSequence && !(value =~ spec.pattern).find()) {
            errors << "--${name} = '${value}' does not match the pattern ${spec.pattern}: ${spec.description}"
        }
        if (spec.type && !typeMatches(spec.type, value)) {
            errors << "--${name} must be of type ${spec.type}, got '${value}'"
            return
        }
        if (spec.minimum != null && value instanceof Number && value < spec.minimum) {
            errors << "--${name} = ${value} is below the minimum ${spec.minimum}: ${spec.description}"
        }
        if (spec.maximum != null && value instanceof Number && value > spec.maximum) {
            errors << "--${name} = ${value} is above the maximum ${spec.maximum}: ${spec.description}"
        }
        if (spec['enum'] && !(value in spec['enum'])) {
            def near = closestName(value.toString(), spec['enum'])
            def hint = near ? " (did you mean '${near}'?)" : ''
            errors << "--${name} = '${value}' is not one of ${spec['enum'].join(', ')}${hint}"
        }
    }
    return errors
}

/*
 * `nextflow run . --help`: every parameter of nextflow_schema.json, grouped as in the schema,
 * with its type, description and default (hidden ones too, after the others of their group).
 */
def helpText(schema_file) {
    def schema = new groovy.json.JsonSlurper().parseText(schema_file.text)
    def lines = [
        "${schema.title}: ${schema.description}",
        '',
        'Usage:',
        '  nextflow run . --raw_dir raw/ --outdir results [--name value ...]',
        '  nextflow run . --input samplesheet.csv --outdir results',
        '  nextflow run . -profile test --outdir results-test',
    ]
    schema['$defs'].each { _group_name, group ->
        lines << ''
        lines << "${group.title}: ${group.description ?: ''}".toString().trim()
        def entries = group['properties'].sort { entry -> entry.value.hidden ? 1 : 0 }
        entries.each { name, spec ->
            def shown = spec.containsKey('default') ? " [default: ${spec['default']}]" : ''
            def allowed = spec['enum'] ? " (one of: ${spec['enum'].join(', ')})" : ''
            def type = spec.type instanceof List ? spec.type.join('|') : (spec.type ?: '')
            lines << "  --${name.padRight(26)} ${type.padRight(8)} ${spec.description}${allowed}${shown}".toString()
        }
    }
    lines << ''
    lines << 'Documentation: docs/usage.md. Stage parameters: also `exo2micro params`.'
    return lines.join('\n')
}

// Levenshtein distance of two strings (insertions, deletions, substitutions).
def editDistance(a, b) {
    def previous = (0..b.length()).toList()
    a.eachWithIndex { ca, i ->
        def current = [i + 1]
        b.eachWithIndex { cb, j ->
            current << [previous[j + 1] + 1, current[j] + 1, previous[j] + (ca == cb ? 0 : 1)].min()
        }
        previous = current
    }
    return previous[b.length()]
}

// The valid name closest to a mistyped one (at most a third of its letters off), or null.
def closestName(name, valid) {
    def scored = valid.collect { candidate -> [editDistance(name.toLowerCase(), candidate.toLowerCase()), candidate] }
    def best = scored.min { pair -> pair[0] }
    return best && best[0] <= Math.max(1, (int) (name.length() / 3)) ? best[1] : null
}

// nf-schema's path formats: a path of the wrong kind, or a missing one where `exists: true`.
def pathErrors(name, spec, value) {
    def kinds = ['file-path': 'file', 'directory-path': 'directory']
    def kind = kinds[spec.format]
    if (!kind || !(value instanceof CharSequence)) {
        return []
    }
    def path = file(value.toString())
    if (!path.exists()) {
        return spec.exists ? ["--${name} ${value} does not exist (expected a ${kind})".toString()] : []
    }
    def is_dir = path.isDirectory()
    return (kind == 'directory') == is_dir ? [] : ["--${name} ${value} is not a ${kind}".toString()]
}

// Parameters that institutional configs (nf-core/configs style, `-profile <site>`) set.
def isSiteParameter(name) {
    return name ==~ /^(config_profile_|custom_config_|institutional_config_).*/
}

/*
 * The code every task runs: the package version plus a SHA-256 over the sources of the package
 * and of bin/ (path and content of each file, in sorted order). It is part of every task's
 * inputs (meta.code), so `-resume` re-runs what an update of the code may change, even when
 * bin/ and the container name stay the same.
 */
def codeVersion(root, version) {
    def digest = java.security.MessageDigest.getInstance('SHA-256')
    def base = root.toString()
    def sources = []
    ['exo2micro', 'bin'].findAll { folder -> java.nio.file.Files.isDirectory(root.resolve(folder)) }.each { folder ->
        java.nio.file.Files.walk(root.resolve(folder)).withCloseable { stream ->
            stream.forEach { path -> sources << path }
        }
    }
    def wanted = sources.findAll { path ->
        java.nio.file.Files.isRegularFile(path) && !path.toString().contains('__pycache__') && !path.toString().endsWith('.pyc')
    }
    wanted.sort { path -> path.toString() }.each { path ->
        digest.update(path.toString().substring(base.length()).getBytes('UTF-8'))
        digest.update(java.nio.file.Files.readAllBytes(path))
    }
    return "${version}+${digest.digest().encodeHex().toString().take(16)}".toString()
}

// The parameters that differ from nextflow.config's defaults, for the log at start-up.
def nonDefaultParameters(all_params, schema_file) {
    def schema = new groovy.json.JsonSlurper().parseText(schema_file.text)
    def defaults = [:]
    schema['$defs'].each { _group_name, group ->
        group['properties'].each { name, spec -> defaults[name] = spec['default'] }
    }
    return all_params.findAll { name, value ->
        defaults.containsKey(name) && name != 'trace_report_suffix' && value != defaults[name]
    }
}

def rawLayoutHelp() {
    return '''
    Expected layout (one folder per sample; the dye is the text after the last '_'):
      raw/
        CD070/
          Sample001_PreStain_SybrGld.tif
          Sample001_PostStain_SybrGld.tif
        CD063/
          x_pre_run3_DAPI.tiff
          x_post_run3_DAPI.tiff
    or a samplesheet (--input) with columns sample,dye,pre,post.'''.stripIndent()
}

// Images listed in a samplesheet (paths absolute or relative to the sheet) that exist.
def samplesheetImages(sheet) {
    def rows = sheet.splitCsv(header: true, strip: true)
    def paths = rows.collectMany { row -> [row.pre, row.post] }.findAll { value -> value }
    def images = paths.collect { value -> value.startsWith('/') ? file(value) : sheet.parent.resolve(value) }
    return images.findAll { image -> image.exists() }.unique()
}

workflow {

    main:
    def schema_file = file("${projectDir}/nextflow_schema.json")
    if (params.help) {
        println(helpText(schema_file))
        System.exit(0)
    }
    def errors = validateParameters(params, schema_file)
    if (errors) {
        error("Invalid parameters:\n  " + errors.join('\n  '))
    }
    params.keySet().findAll { name -> isSiteParameter(name) }.each { name ->
        log.warn("--${name} is a site (institutional) config parameter: accepted, not used by exo2micro")
    }
    def code_version = codeVersion(projectDir, workflow.manifest.version)
    def changed = nonDefaultParameters(params, schema_file)
    log.info("exo2micro ${code_version}" + (changed ? '; parameters that differ from the defaults:\n' + changed.collect { name, value -> "  --${name} ${value}" }.join('\n') : '; every parameter at its default'))
    def sources = [params.input, params.raw_dir, params.synth_pairs > 0 ? 'synth' : null].findAll { value -> value }
    if (sources.size() != 1) {
        error("Give exactly one of --raw_dir (a raw directory) or --input (a samplesheet)," +
            " or use -profile test.\n" + rawLayoutHelp())
    }

    def batch = [id: 'batch', code: code_version]
    def stage_params = stageParameters(params)

    if (params.synth_pairs > 0) {
        def synth_opts = [
            pairs: params.synth_pairs,
            width: params.synth_width,
            height: params.synth_height,
            seed: params.synth_seed,
            broken: params.synth_broken,
        ]
        SYNTH(channel.of([batch, synth_opts]))
        ch_source = SYNTH.out.raw_dir.map { meta, raw -> [meta, raw, [], []] }
    }
    else if (params.raw_dir) {
        def raw = file(params.raw_dir)
        if (!raw.exists()) {
            error("--raw_dir ${params.raw_dir} does not exist.\n" + rawLayoutHelp())
        }
        ch_source = channel.of([batch, raw, [], []])
    }
    else {
        def sheet = file(params.input)
        if (!sheet.exists()) {
            error("--input ${params.input} does not exist; it should be a CSV with columns sample,dye,pre,post.")
        }
        ch_source = channel.of([batch, [], sheet, samplesheetImages(sheet)])
    }

    def discover_opts = [
        samples: params.samples,
        dyes: params.dyes,
        lenient: params.lenient,
        pipeline_params: stage_params[4],
        pair_cpus: params.pair_cpus,
    ]
    DISCOVER(ch_source, discover_opts)

    def provenance = [
        code_version: code_version,
        commit: workflow.commitId ?: '',
        revision: workflow.revision ?: '',
        container: workflow.containerEngine ? "${workflow.containerEngine}:${params.container}" : '',
        nextflow: workflow.nextflow.version.toString(),
        run_name: workflow.runName,
        session_id: workflow.sessionId.toString(),
        profile: workflow.profile,
    ]
    EXO2MICRO(
        DISCOVER.out.pairs,
        DISCOVER.out.skipped,
        stage_params,
        params.checkpoint_format,
        params.max_retries,
        provenance,
    )

    // provenance in pipeline_info/: the parameters of this run
    channel.of(groovy.json.JsonOutput.prettyPrint(groovy.json.JsonOutput.toJson(params)) + '\n')
        .collectFile(name: "params_${params.trace_report_suffix}.json", storeDir: "${params.outdir}/pipeline_info")

    workflow.onComplete = {
        if (workflow.success) {
            log.info("exo2micro: summary in ${params.outdir}/summary.md (report.html for the plots)")
        }
    }
}
