from universal_neurons.cli import main

raise SystemExit(main())
