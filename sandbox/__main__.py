from sandbox.fast import main

main()
